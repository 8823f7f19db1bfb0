// sessiontap report: filters, deep links and keys over content that is all in the HTML. ASCII only (CSP hash).
(function () {
  "use strict";
  var $ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
  var fSession = document.getElementById("f-session");
  var fRule = document.getElementById("f-rule");
  var fFlagged = document.getElementById("f-flagged");
  var count = document.getElementById("f-count");

  function hasRule(el, rule) {
    return (" " + (el.getAttribute("data-rules") || "") + " ").indexOf(" " + rule + " ") >= 0;
  }

  function apply() {
    var s = fSession.value, r = fRule.value, flagged = fFlagged.checked, shown = 0, total = 0;
    $("section.session").forEach(function (sec) {
      sec.hidden = (s && sec.id !== s) || (r && !hasRule(sec, r));
    });
    $("details.call").forEach(function (call) {
      total += 1;
      var hide = (s && call.getAttribute("data-session") !== s) || (r && !hasRule(call, r)) ||
        (flagged && !call.getAttribute("data-rules"));
      call.hidden = hide;
      if (!hide) { shown += 1; }
    });
    $("section.rule-group").forEach(function (g) { g.hidden = !!r && g.getAttribute("data-rule") !== r; });
    $("#findings article.finding").forEach(function (f) {
      f.hidden = !!s && f.getAttribute("data-session") !== s;
    });
    count.textContent = (s || r || flagged) ? "showing " + shown + " of " + total + " calls" : total + " calls";
  }

  function reveal(id) {
    var el = id && document.getElementById(id);
    if (!el) { return; }
    if (el.hidden || (el.closest("section.session") || {}).hidden) {
      fSession.value = ""; fRule.value = ""; fFlagged.checked = false; apply();
    }
    if (el.tagName === "DETAILS") { el.open = true; }
    el.scrollIntoView({block: "start"});
    var summary = el.querySelector("summary");
    if (summary) { summary.focus(); }
  }

  function visibleCalls() { return $("details.call").filter(function (c) { return !c.hidden && c.offsetParent; }); }

  function step(delta) {
    var calls = visibleCalls();
    if (!calls.length) { return; }
    var at = calls.indexOf(document.activeElement && document.activeElement.closest("details.call"));
    var next = calls[Math.max(0, Math.min(calls.length - 1, at < 0 ? 0 : at + delta))];
    var summary = next.querySelector("summary");
    summary.focus();
    summary.scrollIntoView({block: "nearest"});
  }

  [fSession, fRule, fFlagged].forEach(function (el) { el.addEventListener("change", apply); });
  window.addEventListener("hashchange", function () { reveal(location.hash.slice(1)); });
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.ctrlKey || e.metaKey || e.altKey || tag === "SELECT" || tag === "INPUT") { return; }
    if (e.key === "j") { step(1); } else if (e.key === "k") { step(-1); }
    else if (e.key === "o") {
      var call = document.activeElement && document.activeElement.closest("details.call");
      if (call) { call.open = !call.open; }
    } else if (e.key === "/") { e.preventDefault(); fSession.focus(); }
  });
  apply();
  if (location.hash) { reveal(location.hash.slice(1)); }
}());
