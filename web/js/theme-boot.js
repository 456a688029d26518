// theme-boot.js — a plain script run before the first paint, so a page in
// the dark theme never flashes light. The module util.js owns the theme
// afterwards; the key and values must match it.
(function () {
  try {
    var t = window.localStorage.getItem("gradwatchTheme");
    if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
  } catch (e) {
    /* no storage: follow prefers-color-scheme */
  }
})();
