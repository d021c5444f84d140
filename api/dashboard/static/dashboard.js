// Live regions, with no framework and no build step: an element with data-live="<url>" is replaced by
// the HTML fragment the server renders at that URL, once a second while the tab is visible. A region with
// data-reload-on="<statuses>" reloads the whole page when its fragment reports one of them (a finished
// job's page then shows its images, metrics and artifacts).
(function () {
  "use strict";
  var INTERVAL_MS = 1000;
  var busy = false;

  function refresh(region) {
    return fetch(region.dataset.live, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (response.redirected) { window.location.reload(); return; } // signed out: show the sign-in page
      if (!response.ok) { return; }
      return response.text().then(function (html) {
        region.innerHTML = html;
        var marked = region.querySelector("[data-status]");
        var reloadOn = (region.dataset.reloadOn || "").split(" ");
        if (marked && reloadOn.indexOf(marked.dataset.status) >= 0) { window.location.reload(); }
      });
    });
  }

  function tick() {
    if (busy || document.hidden) { return; }
    var regions = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    if (!regions.length) { return; }
    busy = true;
    Promise.all(regions.map(function (r) { return refresh(r).catch(function () {}); }))
      .then(function () { busy = false; });
  }

  window.setInterval(tick, INTERVAL_MS);
})();
