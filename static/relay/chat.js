// The chat page: sends messages through the JSON API and follows runs on their SSE stream
// (runs.js); the thread's own stream tells it of the runs started elsewhere. A page loaded
// mid-run rebuilds the reply being written from its deltas; messages the server already
// rendered (data-message) ignore theirs. A run that waits for a person shows what it asks as a
// card by the tool call (chats/_request.html), answered through the API; its record replaces
// the card when the answer is on the stream, from this tab or any other. A message sent while a
// run is active (and "Interrupt" is not ticked) is queued on the server (if_busy "enqueue") and
// shown as queued until the thread's stream tells of the run it started.
(function () {
  "use strict";

  const chat = document.getElementById("chat");
  if (!chat) return;
  const threadId = chat.dataset.thread;
  const runsBox = document.getElementById("runs");
  const notice = document.getElementById("notice");
  const composer = document.getElementById("composer");
  const textarea = composer.elements.message;
  const interrupt = composer.elements.interrupt;
  const interruptLabel = composer.querySelector(".interrupt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const followUpsBox = document.getElementById("follow-ups");
  const { followRun, post, errorText, TERMINAL } = window.Relay;

  let current = null; // {id, stream}
  let sending = false;
  const startedFollowUps = new Set(); // told by the thread's stream: no longer shown as queued

  // the user's MCP tools by the model's name for them (agents.views.tool_server_map)
  const known = JSON.parse(document.getElementById("relay-tool-servers").textContent);
  function serverOf(name) {
    if (known.tools[name]) return known.tools[name].server;
    const [server, ...rest] = name.split("__");
    return rest.length && known.servers.includes(server) ? server : null;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function setActive(active) {
    stopButton.hidden = !active;
    interruptLabel.hidden = !active;
    if (!active) interrupt.checked = false;
    updateComposer();
  }

  function updateComposer() {
    sendButton.disabled = sending;
    sendButton.textContent = current !== null && !interrupt.checked ? "Queue" : "Send";
  }

  // The queued messages, as the server has them (GET .../follow-ups/), less those the stream
  // has told started meanwhile (the list may have been read just before).
  function showFollowUps(list) {
    followUpsBox.replaceChildren(
      ...list.filter((f) => !startedFollowUps.has(f.follow_up)).map(followUpNode),
    );
  }

  function followUpNode(followUp) {
    const node = fromTemplate("follow-up-template");
    node.dataset.followUp = followUp.follow_up;
    node.querySelector(".follow-up-text").textContent = followUp.message;
    return node;
  }

  async function syncFollowUps() {
    const response = await fetch(`/api/threads/${threadId}/follow-ups/`, { credentials: "same-origin" });
    if (response.ok) showFollowUps((await response.json()).results);
  }

  function followUpStarted(id) {
    startedFollowUps.add(id);
    const node = followUpsBox.querySelector(`[data-follow-up="${id}"]`);
    if (node) node.remove();
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // the server's own markup (chats/_footer.html, chats/_tool.html), cloned
  function fromTemplate(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function runSection(runId) {
    let section = runsBox.querySelector(`section.run[data-run="${runId}"]`);
    if (!section) {
      section = element("section", "run");
      section.dataset.run = runId;
      section.append(fromTemplate("footer-template"));
      runsBox.append(section);
    }
    return section;
  }

  function insertBeforeFooter(section, node) {
    section.insertBefore(node, section.querySelector("footer"));
    node.scrollIntoView({ block: "end" });
  }

  function messageNode(section, id, role) {
    let node = section.querySelector(`[data-message="${id}"]`);
    if (!node) {
      node = element("div", `message ${role}`);
      node.dataset.message = id;
      insertBeforeFooter(section, node);
    }
    return node;
  }

  function toolCard(section, call, name, args) {
    let card = section.querySelector(`details.tool[data-call="${CSS.escape(call)}"]`);
    if (!card) {
      card = fromTemplate("tool-template");
      card.dataset.call = call;
      card.querySelector(".tool-name").textContent = name;
      card.querySelector(".tool-arguments").textContent = args || "";
      insertBeforeFooter(section, card);
    }
    return card;
  }

  // An MCP tool's card shows its server, and the tool by the server's own name: the model's
  // name for it is `<server>__<tool>` (agents/tools/mcp.py), unless it had to be cleaned.
  function showServer(card, name, server) {
    if (!server) return;
    const badge = card.querySelector(".tool-server");
    badge.textContent = server;
    badge.hidden = false;
    const prefix = `${server}__`;
    card.querySelector(".tool-name").textContent = name.startsWith(prefix) ? name.slice(prefix.length) : name;
  }

  // The model call failed before any output and is tried again: said in the run until text
  // comes or the run ends.
  function showRetry(section, data) {
    let note = section.querySelector('[data-role="retry"]');
    if (!note) {
      note = element("p", "notice retry");
      note.dataset.role = "retry";
      note.setAttribute("role", "status");
      insertBeforeFooter(section, note);
    }
    const delay = Number(Number(data.delay).toFixed(1));
    note.textContent = `Provider busy (${data.reason}), retrying in ${delay} s — attempt ${data.attempt}`;
  }

  function clearRetry(section) {
    const note = section.querySelector('[data-role="retry"]');
    if (note) note.remove();
  }

  function requestNode(section, id) {
    return section.querySelector(`.request[data-request="${id}"]`);
  }

  // the card of a request, after its call's tool card; the server's, if it rendered it already
  function requestCard(section, request) {
    const found = requestNode(section, request.id);
    if (found) return found;
    const card = toolCard(section, request.call, request.name, request.arguments);
    const node = fromTemplate(`request-${request.kind}-template`);
    node.dataset.request = request.id;
    if (request.kind === "approval") {
      const server = serverOf(request.name);
      showServer(node, request.name, server);
      if (!server) node.querySelector(".tool-name").textContent = request.name;
      const args = node.querySelector("textarea[name=arguments]");
      args.defaultValue = request.arguments; // what "changed" is measured against
      args.value = request.arguments;
    } else {
      node.querySelector(".request-question").textContent = request.question;
    }
    card.after(node);
    node.scrollIntoView({ block: "end" });
    return node;
  }

  function recordText(request) {
    if (request.status === "denied" && request.reason) return `denied: ${request.reason}`;
    if (request.status === "answered") return `answered: ${request.answer}`;
    if (request.status === "approved" && request.approved_arguments) return "approved with edited arguments";
    return request.status;
  }

  function showDecision(section, request) {
    const node = requestCard(section, request);
    const record = element("p", "request-record");
    record.append(
      element("span", "request-about", request.kind === "question" ? request.question : request.name),
      " ",
      element("strong", "", recordText(request)),
    );
    record.lastChild.dataset.role = "record";
    node.replaceChildren(record);
  }

  async function respond(form, submitter) {
    const node = form.closest(".request");
    const runId = node.closest("section.run").dataset.run;
    const body = { request: Number(node.dataset.request) };
    if (node.dataset.kind === "approval") {
      if (!submitter) return; // only a button decides (Enter in the reason denies: below)
      body.approve = submitter.value === "true";
      const args = form.elements.arguments;
      if (body.approve && args.value !== args.defaultValue) body.arguments = args.value;
      const reason = form.elements.reason.value.trim();
      if (!body.approve && reason) body.reason = reason;
    } else {
      body.answer = form.elements.answer.value;
    }
    const error = form.querySelector(".request-error");
    const buttons = form.querySelectorAll("button");
    const say = (text) => {
      error.textContent = text;
      error.hidden = !text;
    };
    for (const button of buttons) button.disabled = true;
    say("");
    let result;
    try {
      result = await post(`/api/runs/${runId}/respond/`, body);
    } catch (_) {
      result = null;
    }
    if (result && result.response.status === 202) return; // its record comes on the stream
    say(result ? errorText(result.data) : "Could not reach the server; nothing was sent.");
    for (const button of buttons) button.disabled = false;
  }

  function setStatus(section, status, error) {
    const badge = section.querySelector('[data-role="status"]');
    badge.textContent = status;
    badge.className = `badge ${status}`;
    section.querySelector('[data-role="error"]').textContent = error || "";
  }

  const handlers = {
    "run.status"(section, data) {
      // queued again with a reason: its worker was lost or shut down, and another goes on
      const resumed = data.status === "running" && section.dataset.resuming;
      if (data.status === "queued" && data.error) section.dataset.resuming = "1";
      else delete section.dataset.resuming;
      setStatus(section, data.status, resumed ? `resumed (attempt ${data.attempt})` : data.error);
      if (TERMINAL.has(data.status)) {
        clearRetry(section);
        finish();
        if (data.status === "failed") showNotice(`The run failed: ${data.error}`);
      }
    },
    "message.delta"(section, data) {
      clearRetry(section);
      const node = messageNode(section, data.message, "assistant");
      if (node.dataset.done) return; // rendered by the server, or finished already
      node.classList.add("streaming");
      node.append(data.text);
    },
    "message.done"(section, data) {
      clearRetry(section);
      const message = data.message;
      if (message.role === "assistant") {
        if (message.content) {
          const node = messageNode(section, message.id, "assistant");
          node.innerHTML = message.html; // sanitized by the server (agents/markdown.py)
          node.classList.remove("streaming");
          node.classList.toggle("interrupted", Boolean(message.interrupted));
          node.dataset.done = "1";
        }
        for (const call of message.tool_calls) toolCard(section, call.id, call.name, call.arguments);
      }
    },
    "tool.started"(section, data) {
      clearRetry(section);
      const card = toolCard(section, data.call, data.name, data.arguments);
      showServer(card, data.name, data.server);
      card.querySelector(".tool-state").textContent = "running…";
      // an approved call runs with the arguments the person approved
      if (data.arguments) card.querySelector(".tool-arguments").textContent = data.arguments;
    },
    "tool.done"(section, data) {
      const card = toolCard(section, data.call, data.name, "");
      showServer(card, data.name, data.server);
      card.querySelector(".tool-state").textContent = data.error ? "error" : "done";
      card.querySelector(".tool-output-title").textContent = data.error ? "Error" : "Output";
      card.querySelector(".tool-output").textContent = data.error || data.output;
    },
    "input.requested"(section, data) {
      const request = data.request;
      const card = toolCard(section, request.call, request.name, request.arguments);
      showServer(card, request.name, serverOf(request.name));
      if (!requestNode(section, request.id)) card.querySelector(".tool-state").textContent = "waiting";
      requestCard(section, request);
    },
    "input.resolved"(section, data) {
      showDecision(section, data.request);
    },
    "model.retry": showRetry,
    usage(section, data) {
      const usage = section.querySelector('[data-role="usage"]');
      usage.textContent = usage.dataset.format
        .replace("{in}", data.input_tokens).replace("{out}", data.output_tokens);
    },
  };

  function follow(runId, from) {
    const section = runSection(runId);
    // what the server rendered is done: its deltas are not applied again
    for (const node of section.querySelectorAll("[data-message]")) node.dataset.done = "1";
    const run = { id: runId };
    const bound = {};
    for (const [type, handle] of Object.entries(handlers)) bound[type] = (data) => handle(section, data);
    current = run;
    setActive(true);
    run.stream = followRun(runId, {
      from,
      handlers: bound,
      onReset: (id) => reload().then(() => current === run && follow(runId, id)),
      onClosed: () => reload().then(() => current === run && finish()),
      onNotice: showNotice,
    });
  }

  function finish() {
    if (current) current.stream.close();
    current = null;
    setActive(false);
  }

  // Follow `runId` from a freshly reloaded conversation, once, whoever tells of it first: this
  // page's own start, or the thread's stream (which tells this page's starts too).
  let adopting = null;
  async function adopt(runId) {
    if ((current && current.id === runId) || adopting === runId) return;
    adopting = runId;
    if (current) finish(); // interrupted: its stream ends on its own
    try {
      await reload(); // the interrupted run's last words, and the new message, from the server
    } catch (_) {
      // the server is away: the run's stream replays what the page lacks of the reply
    }
    if (adopting !== runId) return; // a newer run came meanwhile
    adopting = null;
    follow(runId);
  }

  // the conversation from the server, unless `wanted()` says no by the time it has come
  async function reload(wanted = () => true) {
    const response = await fetch(chat.dataset.messagesUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    const html = await response.text();
    if (wanted()) runsBox.innerHTML = html;
  }

  async function send() {
    const text = textarea.value;
    if (!text.trim()) return;
    // on a busy thread the message waits its turn, unless it is to interrupt (an idle thread
    // starts it at once either way)
    const body = { message: text, if_busy: interrupt.checked ? "interrupt" : "enqueue" };
    sending = true;
    updateComposer();
    let result;
    try {
      result = await post(`/api/threads/${threadId}/runs/`, body);
    } catch (_) {
      showNotice("Could not reach the server; your message was not sent.");
      sending = false;
      updateComposer();
      return;
    }
    sending = false;
    const { response, data } = result;
    if (response.status === 202 && data.follow_up) {
      showNotice("");
      textarea.value = "";
      if (!startedFollowUps.has(data.follow_up)) followUpsBox.append(followUpNode(data));
    } else if (response.status === 202) {
      showNotice("");
      textarea.value = "";
      if (body.if_busy === "interrupt") syncFollowUps().catch(() => {}); // it cancelled them
      await adopt(data.id);
    } else if (response.status === 409) {
      showNotice(`${data.detail} Tick “Interrupt the current run” to stop it and send.`);
    } else {
      showNotice(errorText(data));
    }
    updateComposer();
    textarea.focus();
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  interrupt.addEventListener("change", updateComposer);
  // the request cards come and go with the conversation (reload() replaces it): one listener
  runsBox.addEventListener("submit", (event) => {
    const form = event.target.closest(".request-form");
    if (!form) return;
    event.preventDefault();
    respond(form, event.submitter);
  });
  // Enter sends an answer, as in the composer; in a denial's reason it denies (the form's
  // implicit submission would press its first button: Approve)
  runsBox.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    const field = event.target.closest(".request-form [name=answer], .request-form [name=reason]");
    if (!field) return;
    event.preventDefault();
    const deny = field.form.querySelector('button[name=approve][value="false"]');
    field.form.requestSubmit(field.name === "reason" ? deny : undefined);
  });
  stopButton.addEventListener("click", async () => {
    if (!current) return;
    const { response, data } = await post(`/api/runs/${current.id}/stop/`);
    if (response.status !== 202) showNotice(errorText(data));
  });

  // A run started elsewhere (another tab, the API, a schedule) shows up here too: the thread's
  // stream tells each run that starts on it, and at every connection the one already active.
  // What ended while the stream was not open (the page loading, the server away) is reloaded
  // when it opens. The browser reconnects it after a network error; a refusal (429 at the
  // open-stream cap, 503) closes it, and it is opened again later, waiting longer each time.
  const THREAD_RETRY_MS = [1000, 60000]; // the first wait, and the longest
  function watchThread(wait) {
    const source = new EventSource(`/api/threads/${threadId}/events/`);
    source.addEventListener("run.started", (event) => {
      const started = JSON.parse(event.data);
      if (started.follow_up) followUpStarted(started.follow_up);
      adopt(started.run);
    });
    source.onopen = () => {
      wait = THREAD_RETRY_MS[0];
      syncFollowUps().catch(() => {}); // what started or was queued while it was closed
      const idle = () => !current && !adopting; // else the run's own reload is under way
      if (idle()) reload(idle).catch(() => {});
    };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects it
      setTimeout(() => watchThread(Math.min(wait * 2, THREAD_RETRY_MS[1])), wait);
    };
  }

  if (chat.dataset.activeRun) follow(chat.dataset.activeRun);
  else setActive(false);
  watchThread(THREAD_RETRY_MS[0]);
})();
