"use strict";
// Filters, sorting and on-demand pictures of an attnviz report; works from file:// with no server.
// The page's state is written into <body data-*> (cards, visible, images loaded/failed, errors)
// so that a headless browser can check it. Initial state can be given in the URL's hash:
// #mis=1&dis=1&class=NAME&sort=KEY&dir=asc&open=1&eager=1 (open: every gate panel; eager: load
// every picture now instead of when it scrolls into view)
(function () {
  var body = document.body;
  var errors = [];
  function note(message) {
    errors.push(String(message));
    body.dataset.errors = JSON.stringify(errors);
  }
  window.addEventListener("error", function (event) {
    if (event.target && event.target.tagName === "IMG") return;  // counted below
    note(event.message || "error");
  });
  window.addEventListener("unhandledrejection", function (event) { note(event.reason); });

  // Each picture is counted once, whether it finished before this script ran or after.
  var counted = new WeakSet(), loaded = 0, failed = 0, failedSources = [];
  function count(img) {
    if (counted.has(img) || !img.getAttribute("src") || !img.complete) return;
    counted.add(img);
    if (img.naturalWidth > 0) { loaded += 1; } else { failed += 1; failedSources.push(img.getAttribute("src")); }
    body.dataset.imagesLoaded = loaded;
    body.dataset.imagesFailed = failed;
    if (failed) body.dataset.failedSources = JSON.stringify(failedSources.slice(0, 20));
  }
  document.addEventListener("load", function (event) { if (event.target.tagName === "IMG") count(event.target); }, true);
  document.addEventListener("error", function (event) { if (event.target.tagName === "IMG") count(event.target); }, true);

  var container = document.getElementById("cards");
  var cards = Array.prototype.slice.call(container.querySelectorAll("article.card"));
  var values = new Map();
  cards.forEach(function (card) { values.set(card, JSON.parse(card.dataset.v || "{}")); });
  var controls = {
    mis: document.getElementById("f-mis"),
    dis: document.getElementById("f-dis"),
    cls: document.getElementById("f-class"),
    sort: document.getElementById("f-sort"),
    dir: document.getElementById("f-dir")
  };

  function reveal(root) {
    Array.prototype.forEach.call(root.querySelectorAll("img[data-src]"), function (img) {
      img.setAttribute("src", img.dataset.src);
      img.removeAttribute("data-src");
    });
  }
  function openAll() {
    Array.prototype.forEach.call(document.querySelectorAll("details.gates, details.fig"), function (details) {
      details.open = true;
      reveal(details);
    });
  }
  container.addEventListener("toggle", function (event) {
    if (event.target.open) reveal(event.target);
  }, true);
  document.querySelectorAll("details.fig").forEach(function (details) {
    details.addEventListener("toggle", function () { if (details.open) reveal(details); });
  });

  function compare(key, direction) {
    return function (a, b) {
      var x = values.get(a)[key], y = values.get(b)[key];
      var missingX = x === null || x === undefined, missingY = y === null || y === undefined;
      if (missingX || missingY) return missingX === missingY ? 0 : (missingX ? 1 : -1);
      var order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return direction === "asc" ? order : -order;
    };
  }

  function apply() {
    var cls = controls.cls.value, visible = 0;
    cards.forEach(function (card) {
      var show = (!controls.mis.checked || card.dataset.mis === "1")
        && (!controls.dis.checked || card.dataset.dis === "1")
        && (!cls || card.dataset.classes.split("|").indexOf(cls) >= 0);
      card.classList.toggle("hidden", !show);
      if (show) visible += 1;
    });
    var sorted = cards.slice().sort(compare(controls.sort.value, controls.dir.value));
    var order = sorted.map(function (card) { return card.dataset.id; });
    sorted.forEach(function (card) { container.appendChild(card); });
    document.getElementById("count").textContent = "showing " + visible + " of " + cards.length;
    body.dataset.visible = visible;
    body.dataset.order = JSON.stringify(order.filter(function (id, i) { return !sorted[i].classList.contains("hidden"); }));
    writeHash();
  }

  function writeHash() {
    var parts = [];
    if (controls.mis.checked) parts.push("mis=1");
    if (controls.dis.checked) parts.push("dis=1");
    if (controls.cls.value) parts.push("class=" + encodeURIComponent(controls.cls.value));
    parts.push("sort=" + encodeURIComponent(controls.sort.value));
    parts.push("dir=" + controls.dir.value);
    var hash = "#" + parts.join("&");
    if (location.hash !== hash && history.replaceState) history.replaceState(null, "", hash);
  }

  function readHash() {
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var pair = part.split("=");
      if (pair[0]) state[decodeURIComponent(pair[0])] = decodeURIComponent(pair[1] || "");
    });
    controls.mis.checked = state.mis === "1";
    controls.dis.checked = state.dis === "1";
    if (state["class"] !== undefined) controls.cls.value = state["class"];
    if (state.sort && controls.sort.querySelector('option[value="' + CSS.escape(state.sort) + '"]')) controls.sort.value = state.sort;
    if (state.dir === "asc" || state.dir === "desc") controls.dir.value = state.dir;
    return state;
  }

  try {
    var state = readHash();
    [controls.mis, controls.dis, controls.cls, controls.sort, controls.dir].forEach(function (control) {
      control.addEventListener("change", apply);
    });
    document.getElementById("f-open").addEventListener("click", openAll);
    apply();
    if (state.open === "1") openAll();
    if (state.eager === "1") {
      Array.prototype.forEach.call(document.images, function (img) { img.loading = "eager"; });
    }
    Array.prototype.forEach.call(document.images, count);
    body.dataset.cards = cards.length;
    body.dataset.imagesLoaded = loaded;
    body.dataset.imagesFailed = failed;
    body.dataset.status = "ready";
  } catch (error) {
    note(error && error.stack ? error.stack : error);
    body.dataset.status = "failed";
  }
})();
