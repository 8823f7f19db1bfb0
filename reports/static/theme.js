// sessiontap pages: the light/dark switch (the #theme button, or the t key). ASCII only (CSP hash).
(function () {
  "use strict";
  function toggle() {
    var root = document.documentElement;
    var dark = root.getAttribute("data-theme") === "dark" ||
      (!root.getAttribute("data-theme") && window.matchMedia("(prefers-color-scheme: dark)").matches);
    root.setAttribute("data-theme", dark ? "light" : "dark");
  }
  document.getElementById("theme").addEventListener("click", toggle);
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.key === "t" && !e.ctrlKey && !e.metaKey && !e.altKey && tag !== "INPUT" && tag !== "SELECT") { toggle(); }
  });
}());
