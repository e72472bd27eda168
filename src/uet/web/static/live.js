// uet web: live updates. Listens to the page's Server-Sent Events stream (data-stream on
// <body>); appends each new event of the trail as text (never as markup), and refreshes
// the page's live sections ([data-live], by id) from the server's own rendering of the
// same address. No inline script anywhere: the Content-Security-Policy forbids it.
(function () {
  "use strict";
  var body = document.body;
  var url = body.getAttribute("data-stream");
  if (!url || !window.EventSource) { return; }
  var after = body.getAttribute("data-after") || "";
  var badge = document.getElementById("live");
  var trail = document.getElementById("events");
  var timer = null;
  var refreshing = false;
  var again = false;
  var updates = 0;

  function status(text) { if (badge) { badge.setAttribute("data-status", text); } }

  function refresh() {
    timer = null;
    if (refreshing) { again = true; return; }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var sections = document.querySelectorAll("[data-live]");
        for (var i = 0; i < sections.length; i++) {
          var old = sections[i];
          var replacement = old.id ? fresh.getElementById(old.id) : null;
          if (replacement) { old.replaceWith(document.importNode(replacement, true)); }
        }
        updates += 1;
        body.setAttribute("data-updates", String(updates));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; schedule(); }
      });
  }

  function schedule() { if (timer === null) { timer = window.setTimeout(refresh, 200); } }

  function span(cls, text) {
    var element = document.createElement("span");
    element.className = cls;
    element.textContent = text;
    return element;
  }

  function append(event) {
    if (!trail) { return; }
    var item;
    try { item = JSON.parse(event.data); } catch (error) { return; }
    if (trail.querySelector('li[data-seq="' + String(Number(item.seq)) + '"]')) { return; }
    var li = document.createElement("li");
    li.setAttribute("data-seq", String(Number(item.seq)));
    li.className = "new";
    li.appendChild(span("seq", String(item.seq)));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(span("time", String(item.timestamp)));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(span("type", String(item.event_type)));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(span("data", String(item.data)));
    trail.appendChild(li);
  }

  var source = new EventSource(url + (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(after));
  source.addEventListener("open", function () { status("open"); });
  source.addEventListener("error", function () { status("connecting"); });
  source.addEventListener("ledger", function (event) { append(event); schedule(); });
  source.addEventListener("end", function () { source.close(); status("closed"); schedule(); });
})();
