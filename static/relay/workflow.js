// A workflow run's page: each step's status live, agent steps' text as it is written, and the
// outputs after. The stream is followed with the chat's code (runs.js).
(function () {
  "use strict";
  const list = document.getElementById("steps");
  if (!list) return;
  const runId = list.dataset.run;
  const notice = document.getElementById("notice");
  const stopButton = document.getElementById("stop");
  const retryButton = document.getElementById("retry");
  const { followRun, post, errorText, TERMINAL } = window.Relay;
  let current = null; // the step being executed

  const showNotice = (text) => {
    notice.textContent = text;
    notice.hidden = !text;
  };
  const part = (stepId, role) => list.querySelector(`[data-step="${CSS.escape(stepId)}"] [data-role="${role}"]`);

  function setStepStatus(stepId, status) {
    const badge = part(stepId, "status");
    badge.textContent = status;
    badge.className = `badge ${status}`;
  }

  const handlers = {
    "step.started"(data) {
      current = data.step;
      setStepStatus(data.step, "running");
    },
    "step.done"(data) {
      setStepStatus(data.step, data.status + (data.reused ? " (reused)" : ""));
      part(data.step, "live").hidden = true;
      const output = part(data.step, "output");
      if (data.output !== null && data.output !== undefined) {
        output.textContent = typeof data.output === "string" ? data.output : JSON.stringify(data.output);
        output.hidden = false;
      }
      part(data.step, "error").textContent = data.error || "";
    },
    "message.delta"(data) {
      if (!current) return;
      const live = part(current, "live");
      live.hidden = false;
      live.append(data.text);
    },
    "run.status"(data) {
      const badge = document.getElementById("run-status");
      badge.textContent = data.status;
      badge.className = `badge ${data.status}`;
      document.getElementById("run-error").textContent = data.error || "";
      if (TERMINAL.has(data.status)) {
        stream.close();
        stopButton.hidden = true;
        location.reload(); // the record as the database has it, and the retry button if it failed
      }
    },
  };

  let stream = { close() {} };
  function follow(from) {
    stream = followRun(runId, {
      from,
      handlers,
      onReset: (id) => follow(id), // the log lost its start: go on from where it is now
      onClosed: () => location.reload(),
      onNotice: showNotice,
    });
  }
  if (list.dataset.active) follow();
  stopButton.addEventListener("click", async () => {
    const { response, data } = await post(`/api/runs/${runId}/stop/`);
    if (response.status !== 202) showNotice(errorText(data));
  });
  if (retryButton) {
    retryButton.addEventListener("click", async () => {
      const { response, data } = await post(`/api/runs/${runId}/retry/`);
      if (response.status === 202) location.assign(`/workflows/runs/${data.id}/`);
      else showNotice(errorText(data));
    });
  }
})();
