// The compliance console's own script: small, no third-party code, no inline handlers (the page's
// Content-Security-Policy allows scripts from this file only). Pages work without it; it adds
// live refresh where a page asks for it (data-refresh="seconds" on an element with an id).
"use strict";
(function () {
  function refresh(el) {
    var seconds = parseInt(el.getAttribute("data-refresh"), 10);
    if (!(seconds > 0)) { return; }
    setInterval(function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text === null) { return; }
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.getElementById(el.id);
          if (fresh) { el.replaceChildren.apply(el, Array.prototype.slice.call(fresh.childNodes)); }
        })
        .catch(function () { /* the next tick tries again */ });
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh][id]").forEach(refresh);
  });
})();
