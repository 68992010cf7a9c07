// Following a run's event stream, shared by the chat and workflow run pages.
//
// The stream starts at the run's first event unless told otherwise, so a page loaded mid-run
// rebuilds what it missed. Every event id is applied once: the browser resends the last id it
// saw when it reconnects, and anything at or below the last applied id is skipped.
(function () {
  "use strict";
  const RECONNECT_GIVE_UP_MS = 10000;
  const csrf = () => document.querySelector("[name=csrfmiddlewaretoken]").value;

  // handlers: {eventType: data => ...}; onReset(id): the log no longer holds what we need,
  // reload from the server and follow again from `id`; onClosed(): the server has nothing more
  // for us (204) or refused; onNotice(text): what to tell the person about the connection.
  function followRun(runId, { from, handlers, onReset, onClosed, onNotice }) {
    const last = from || `run-${runId}:0`;
    const source = new EventSource(`/api/runs/${runId}/events/?lastEventId=${encodeURIComponent(last)}`);
    let applied = Number(last.split(":").pop());
    let lostTimer = null;
    let closed = false;
    const close = () => {
      closed = true;
      source.close();
      clearTimeout(lostTimer);
    };
    for (const [type, handle] of Object.entries(handlers)) {
      source.addEventListener(type, (event) => {
        const n = Number(event.lastEventId.split(":").pop());
        if (n <= applied) return;
        applied = n;
        handle(JSON.parse(event.data));
      });
    }
    source.addEventListener("stream-reset", (event) => {
      close();
      onReset(event.lastEventId);
    });
    source.onopen = () => {
      clearTimeout(lostTimer);
      lostTimer = null;
      onNotice("");
    };
    source.onerror = () => {
      if (closed) return;
      if (source.readyState === EventSource.CLOSED) {
        close();
        onClosed();
        return;
      }
      onNotice("Connection lost, reconnecting…");
      if (!lostTimer) {
        lostTimer = setTimeout(() => {
          onNotice("The connection to the server did not come back. The run goes on on the server: reload the page to see it.");
        }, RECONNECT_GIVE_UP_MS);
      }
    };
    return { close };
  }

  // POST JSON to the API with the session's CSRF token: {response, data}.
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = { detail: `The server answered ${response.status}.` };
    }
    return { response, data };
  }

  function errorText(body) {
    if (body.detail) return body.detail;
    return Object.entries(body).map(([field, reasons]) => `${field}: ${[].concat(reasons).join(" ")}`).join("; ");
  }

  // the statuses come from the server (the relay-run-statuses script in base.html)
  const statuses = JSON.parse(document.getElementById("relay-run-statuses").textContent);
  window.Relay = { followRun, post, errorText, TERMINAL: new Set(statuses.terminal) };
})();
