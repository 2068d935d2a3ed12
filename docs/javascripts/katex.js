// Render pymdownx.arithmatex (generic mode) output with KaTeX; re-run on instant navigation.
function renderMath() {
  if (typeof renderMathInElement === "undefined") return;
  renderMathInElement(document.body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath);
} else {
  window.addEventListener("load", renderMath);
}
