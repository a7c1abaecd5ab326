// snapfaas dashboard: draws the latency charts and follows a function's log live.
// Served from the server itself (no CDN); the page's data comes as JSON blocks in the HTML.
"use strict";

const COLORS = { cold: "#d9534f", restore: "#2a7ae2", warm: "#5cb85c" };
const LABELS = { cold: "cold start (on-demand init)", restore: "SnapStart restore", warm: "warm" };

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function drawCharts() {
  for (const block of document.querySelectorAll("script.chart-data")) {
    const canvas = document.getElementById(block.dataset.for);
    const series = JSON.parse(block.textContent);
    const datasets = Object.keys(LABELS).map((start) => ({
      label: LABELS[start], data: series[start] || [], showLine: false, pointRadius: 4,
      backgroundColor: COLORS[start], borderColor: COLORS[start],
    }));
    const xs = datasets.flatMap((d) => d.data.map((p) => p.x));
    const pad = Math.max(5, (Math.max(...xs) - Math.min(...xs)) * 0.05);
    const chart = new Chart(canvas, {
      type: "scatter",
      data: { datasets },
      options: {
        animation: false, responsive: false,
        scales: {
          x: { type: "linear", min: Math.min(...xs) - pad, max: Math.max(...xs) + pad,
               title: { display: true, text: "time" }, ticks: { callback: clock, maxTicksLimit: 8 } },
          y: { type: "logarithmic", title: { display: true, text: "latency (ms)" } },
        },
        plugins: { tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${item.parsed.y.toFixed(2)} ms at ${clock(item.parsed.x)}` } } },
      },
    });
    canvas.dataset.points = String(datasets.reduce((n, d) => n + d.data.length, 0));
    canvas.dataset.rendered = chart ? "yes" : "no";
  }
}

async function followLog(pre) {
  const status = document.getElementById("log-status");
  const query = new URLSearchParams({ follow: "1", limit: "500" });
  if (pre.dataset.version) query.set("version", pre.dataset.version);
  if (pre.dataset.requestId) query.set("request_id", pre.dataset.requestId);
  let response;
  try {
    response = await fetch(`${pre.dataset.source}?${query}`, { credentials: "same-origin" });
  } catch (error) {
    status.textContent = `failed: ${error}`;
    return;
  }
  if (!response.ok) {
    status.textContent = `failed: HTTP ${response.status}`;
    return;
  }
  status.textContent = "following";
  pre.dataset.following = "yes";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pre.append(document.createTextNode(decoder.decode(value, { stream: true }).replaceAll("\r", "\n    ")));
    pre.dataset.lines = String(pre.textContent.split("\n").length - 1);
    pre.scrollTop = pre.scrollHeight;
  }
  status.textContent = "ended (server stopped or connection closed)";
  pre.dataset.following = "ended";
}

document.addEventListener("DOMContentLoaded", () => {
  if (window.Chart) drawCharts();
  const pre = document.getElementById("log");
  if (pre) followLog(pre);
});
