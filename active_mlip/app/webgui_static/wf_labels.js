// active-mlip: readable node labels on FireWorks' workflow page.
//
// FireWorks' wf_cyto.js draws every firework as one line of 14 px text, as wide as its
// name, and fits the graph into the page: a 25-firework loop (8 ensemble members side by
// side) is drawn at a third of full size, 4-5 px text. Here labels wrap into short
// lines (narrower nodes), ranks sit closer, and the graph is laid out and fitted again;
// the page's stylesheet (active-mlip) makes the drawing area taller.
(function () {
  "use strict";
  var MAX_LINE = 14; // characters per line
  var CHAR_PX = 8.2; // 14 px sans-serif, average character width

  function wrap(name) {
    var lines = [];
    var line = "";
    String(name).split(/\s+/).forEach(function (word) {
      if (line && (line + " " + word).length > MAX_LINE) {
        lines.push(line);
        line = word;
      } else {
        line = line ? line + " " + word : word;
      }
    });
    if (line) lines.push(line);
    return lines;
  }

  function relabel(cy) {
    cy.nodes().forEach(function (node) {
      var lines = wrap(node.data("name") || "");
      var longest = Math.max.apply(null, lines.map(function (l) { return l.length; }));
      node.data("label", lines.join("\n"));
      node.data("width", Math.round(longest * CHAR_PX + 14));
      node.data("height", lines.length * 17 + 10);
    });
    cy.style()
      .selector("node")
      .css({
        content: "data(label)",
        "text-wrap": "wrap",
        width: "data(width)",
        height: "data(height)",
      })
      .update();
    cy.layout({ name: "dagre", rankDir: "TB", nodeSep: 12, rankSep: 36, fit: true, padding: 12 });
  }

  // wf_cyto.js sets window.cy to the graph once its JSON has arrived (until then the
  // name is the browser's alias of the <div id="cy"> element)
  var tries = 0;
  var timer = setInterval(function () {
    var cy = window.cy;
    if (cy && typeof cy.nodes === "function" && cy.nodes().length) {
      clearInterval(timer);
      relabel(window.cy);
    } else if (++tries > 400) {
      clearInterval(timer);
    }
  }, 25);
})();
