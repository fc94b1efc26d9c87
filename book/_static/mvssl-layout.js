// Wide inline math and long inline code in tables (book/_static/mvssl-layout.css, issue 14 item 4).
//
// The theme clips inline math at the width of its line (span.math {overflow: hidden}), and MathJax 3
// does not break inline math. A span whose drawn math is wider than the span by more than 2 px is marked
// `mvssl-scrolls`, which the CSS lets scroll with a shadow cue. Most inline math overflows its span by
// a fraction of a pixel, so scrolling every span would put a scrollbar under each. Marked once MathJax
// has typeset the page, and again when the window is resized.
(function () {
  "use strict";
  function mark() {
    for (const span of document.querySelectorAll("span.math")) {
      span.classList.remove("mvssl-scrolls");
      // the drawn math, not the span's scrollWidth: MathJax's hidden assistive MathML is wider
      const math = span.querySelector("mjx-math");
      if (!math) continue;
      const box = span.getBoundingClientRect(), drawn = math.getBoundingClientRect();
      if (drawn.right > box.right + 2 || drawn.left < box.left - 2) span.classList.add("mvssl-scrolls");
    }
  }
  // Inline code in tables: a break point (<wbr>) after each "/" and "_" and before each "." of a path or
  // module name, so that a long one wraps at its parts instead of widening its column (mvssl-layout.css).
  function breakPoints() {
    for (const span of document.querySelectorAll("table code.literal span.pre")) {
      const text = span.textContent;
      if (span.querySelector("wbr") || !/[/._]/.test(text.slice(1, -1))) continue;
      span.textContent = "";
      text.split(/(?<=[/_])|(?=\.)/).forEach(function (part, i) {
        if (i > 0) span.appendChild(document.createElement("wbr"));
        span.appendChild(document.createTextNode(part));
      });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", breakPoints);
  else breakPoints();
  window.addEventListener("load", function () {
    const startup = window.MathJax && window.MathJax.startup;
    if (startup && startup.promise) startup.promise.then(mark);
    else mark();
  });
  let pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(mark, 100);
  });
})();
