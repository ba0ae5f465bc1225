// The campaign chart, shared by the live page and the one-file report: every ended run of the metric as a point,
// one colour per GPU class, failed runs in red at their class's running best, and the running best as a step line.
"use strict";
const ARC_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

function arcChartData(campaign) {
  const better = campaign.direction === "max" ? Math.max : Math.min;
  const pts = campaign.points;
  const classes = [...new Set(pts.map(p => p.cls))].sort();
  const xs = pts.map(p => p.t);
  const series = [{}], cols = [xs];
  const best = {};
  const runs = classes.map(() => xs.map(() => null));
  const steps = classes.map(() => xs.map(() => null));
  const failed = xs.map(() => null);
  pts.forEach((p, i) => {
    const c = classes.indexOf(p.cls);
    const ok = p.status === "succeeded" && p.v !== null;
    if (ok) {
      runs[c][i] = p.v;
      best[p.cls] = best[p.cls] === undefined ? p.v : better(best[p.cls], p.v);
      steps[c][i] = best[p.cls];
    } else {
      failed[i] = best[p.cls] === undefined ? (p.v === null ? 0 : p.v) : best[p.cls];
    }
  });
  classes.forEach((cls, c) => {
    const color = ARC_COLORS[c % ARC_COLORS.length];
    series.push({label: cls + " runs", stroke: color, paths: () => null, points: {show: true, size: 6, fill: color}});
    cols.push(runs[c]);
    series.push({label: cls + " best", stroke: color, width: 2, spanGaps: true,
                 paths: uPlot.paths.stepped({align: 1}), points: {show: false}});
    cols.push(steps[c]);
  });
  series.push({label: "failed", stroke: "#d00", paths: () => null, points: {show: true, size: 8, fill: "#d00"}});
  cols.push(failed);
  return {series, cols, classes};
}

// Draws into `el`; returns the uPlot (its .data is what the tests count).
function arcCampaignChart(el, campaign, width) {
  const {series, cols} = arcChartData(campaign);
  el.textContent = "";
  const plot = new uPlot({width: width || 900, height: 340, series,
    scales: {x: {time: true}}, axes: [{}, {label: campaign.metric + (campaign.direction === "max" ?
      " (higher is better)" : " (lower is better)")}]}, cols, el);
  el.dataset.points = String(campaign.points.length);
  return plot;
}

// The number of points drawn: every run series' and the failed series' non-null values.
function arcChartPointCount(plot) {
  let n = 0;
  plot.series.forEach((s, i) => {
    if (i > 0 && !s.label.endsWith(" best")) n += plot.data[i].filter(v => v !== null).length;
  });
  return n;
}
