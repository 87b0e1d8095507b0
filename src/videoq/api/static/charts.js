// The console's two charts, drawn as inline SVG (no library): jobs finished per minute
// (stacked bars by outcome) and the wait before start (average and longest, as lines).

const NS = "http://www.w3.org/2000/svg";
const W = 600, H = 140, LEFT = 34, BOTTOM = 16, TOP = 6;

function node(name, attrs, parent) {
  const element = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
  parent.append(element);
  return element;
}

function text(parent, x, y, value, anchor = "end") {
  node("text", { x, y, "text-anchor": anchor }, parent).textContent = value;
}

function frame(svg, top, minutes, label) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  node("line", { x1: LEFT, y1: H - BOTTOM, x2: W, y2: H - BOTTOM, class: "axis" }, svg);
  node("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM, class: "axis" }, svg);
  text(svg, LEFT - 4, TOP + 8, String(top));
  text(svg, LEFT - 4, H - BOTTOM, "0");
  if (minutes.length) {
    text(svg, LEFT, H - 3, label(minutes[0]), "start");
    text(svg, W, H - 3, label(minutes[minutes.length - 1]));
  }
}

function niceTop(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return Math.ceil(value / step) * step;
}

/** Bars per minute: succeeded, failed, cancelled stacked. `label(iso)` formats a minute. */
export function throughput(svg, series, label) {
  const totals = series.minutes.map((_, i) =>
    series.succeeded[i] + series.failed[i] + series.cancelled[i]);
  const top = niceTop(Math.max(0, ...totals));
  frame(svg, top, series.minutes, label);
  const width = (W - LEFT) / series.minutes.length;
  const scale = (H - BOTTOM - TOP) / top;
  series.minutes.forEach((minute, i) => {
    let y = H - BOTTOM;
    for (const [key, cls] of [["succeeded", "bar-ok"], ["failed", "bar-bad"], ["cancelled", "bar-cancel"]]) {
      const height = series[key][i] * scale;
      if (height <= 0) continue;
      y -= height;
      const bar = node("rect", { x: LEFT + i * width + 0.5, y, width: Math.max(1, width - 1), height, class: cls }, svg);
      node("title", {}, bar).textContent = `${label(minute)}: ${series[key][i]} ${key}`;
    }
  });
  svg.dataset.total = String(totals.reduce((a, b) => a + b, 0));
}

/** Lines per minute: the average and the longest wait before start (gaps where none started). */
export function waits(svg, series, label) {
  const values = series.wait_max_s.filter((v) => v !== null);
  const top = niceTop(Math.max(0, ...values));
  frame(svg, top, series.minutes, label);
  const width = (W - LEFT) / series.minutes.length;
  const scale = (H - BOTTOM - TOP) / top;
  for (const [key, cls] of [["wait_max_s", "line-max"], ["wait_avg_s", "line-avg"]]) {
    let path = "";
    let pen = "M";
    series[key].forEach((value, i) => {
      if (value === null) { pen = "M"; return; }
      const x = LEFT + (i + 0.5) * width, y = H - BOTTOM - value * scale;
      path += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = "L";
      const dot = node("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 1.6, class: cls }, svg);
      node("title", {}, dot).textContent = `${label(series.minutes[i])}: ${value} s`;
    });
    if (path) node("path", { d: path, class: cls }, svg);
  }
  svg.dataset.points = String(values.length);
}
