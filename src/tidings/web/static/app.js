// The live view: an EventSource on /stream, a topic filter, pause and resume.
// Every value goes into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const list = document.getElementById("events");
  if (!list) return;
  const form = document.getElementById("live-filter");
  const input = document.getElementById("topic");
  const pauseButton = document.getElementById("pause");
  const state = document.getElementById("state");
  const KEEP = 500; // rows kept on the page
  let source = null;
  let lastSeq = null;
  let paused = false;

  function cell(tag, className, text) {
    const el = document.createElement(tag);
    el.className = className;
    el.textContent = text;
    return el;
  }

  function show(event) {
    const row = document.createElement("li");
    row.className = "event" + (event.visibility === "private" ? " private" : "");
    row.dataset.seq = String(event.seq);
    row.appendChild(cell("span", "time mono", (event.time || "").replace("T", " ").slice(11, 23)));
    const link = cell("a", "topic wrap", event.topic);
    link.href = "/event/" + encodeURIComponent(event.id);
    row.appendChild(link);
    row.appendChild(cell("span", "meta", event.source + " · " + (event.type || "untyped") + " · " + event.id));
    list.prepend(row);
    while (list.children.length > KEEP) list.removeChild(list.lastChild);
  }

  function open(resume) {
    const params = new URLSearchParams();
    const topic = input.value.trim();
    if (topic) params.set("topic", topic);
    if (resume !== null) params.set("last_event_id", String(resume));
    else params.set("backlog", "50");
    source = new EventSource(list.dataset.stream + "?" + params.toString());
    source.onopen = function () { state.textContent = "live"; };
    source.onerror = function () { failed(this); };
    source.onmessage = function (message) {
      lastSeq = Number(message.lastEventId);
      show(JSON.parse(message.data));
    };
  }

  // The browser retries a stream that broke by itself; one the server answered with an error
  // (a filter it refuses, a proxy's 502 during a restart) it closes for good: ask why.
  function failed(broken) {
    if (broken.readyState !== EventSource.CLOSED) {
      state.textContent = "reconnecting…";
      return;
    }
    fetch(broken.url, { headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status >= 400 && response.status < 500) return response.json();
        if (response.body) response.body.cancel();
        throw new Error("not the request's fault");
      })
      .then(function (answer) {
        state.textContent = "stopped: " + (answer.error || "the server refused this stream");
      })
      .catch(function () {
        state.textContent = "reconnecting…";
        setTimeout(function () { if (source === broken) open(lastSeq); }, 2000);
      });
  }

  function close() {
    if (source) source.close();
    source = null;
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    close();
    list.textContent = "";
    lastSeq = null;
    const topic = input.value.trim();
    history.replaceState(null, "", topic ? "/?topic=" + encodeURIComponent(topic) : "/");
    paused = false;
    pauseButton.textContent = "Pause";
    open(null);
  });

  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      close();
      state.textContent = "paused";
    } else {
      open(lastSeq); // from the last event shown: nothing missed while paused
    }
  });

  open(null);
})();
