/* ollama-gate console: the live parts only (charts, copy, confirm, pull progress). No rule lives here:
   the server decides everything, this draws what it sends. */
(function () {
  "use strict";

  function drawChart(el, times, values, label, color) {
    if (!el || typeof uPlot === "undefined") return null;
    var width = Math.max(260, el.clientWidth || 320);
    var opts = {
      width: width, height: 200,
      series: [{}, { label: label, stroke: color, width: 2, fill: color + "22" }],
      axes: [{}, { size: 60 }],
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } },
      legend: { show: true }
    };
    el.textContent = "";
    var chart = new uPlot(opts, [times, values], el);
    el.dataset.points = String(values.length);
    el.dataset.total = String(values.reduce(function (a, b) { return a + b; }, 0));
    return chart;
  }

  var charts = {};
  function drawAll(data) {
    var specs = [
      ["chart-requests-hour", "hour", "requests", "requests/min", "#0b5cad"],
      ["chart-tokens-hour", "hour", "tokens", "tokens/min", "#116329"],
      ["chart-requests-day", "day", "requests", "requests/min", "#0b5cad"],
      ["chart-tokens-day", "day", "tokens", "tokens/min", "#116329"]
    ];
    specs.forEach(function (s) {
      var el = document.getElementById(s[0]);
      var series = data[s[1]];
      if (!el || !series) return;
      if (charts[s[0]]) charts[s[0]].destroy();
      charts[s[0]] = drawChart(el, series.t, series[s[2]], s[3], s[4]);
    });
    window.consoleCharts = charts;
  }

  var holder = document.getElementById("chart-data");
  if (holder) {
    var data = JSON.parse(holder.dataset.series);
    drawAll(data);
    // Live: the series again every 30 seconds, from the console's JSON endpoint.
    setInterval(function () {
      Promise.all(["hour", "day"].map(function (r) {
        return fetch("/console/api/series?range=" + r, { credentials: "same-origin" }).then(function (res) {
          if (!res.ok) throw new Error(res.status);
          return res.json();
        });
      })).then(function (both) { drawAll({ hour: both[0], day: both[1] }); }).catch(function () {});
    }, 30000);
  }

  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.dataset.copy);
      var status = document.getElementById("copy-status");
      input.select();
      var done = function () { if (status) status.textContent = "Copied to the clipboard."; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
      } else { document.execCommand("copy"); done(); }
    });
  });

  document.querySelectorAll("form.confirm").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  document.querySelectorAll("form.pull").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var bar = form.querySelector("progress");
      var status = form.querySelector(".pull-status");
      var button = form.querySelector("button");
      bar.hidden = false; bar.value = 0; button.disabled = true;
      status.textContent = "Starting…";
      fetch(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" })
        .then(function (res) {
          if (!res.ok || !res.body) {
            return res.text().then(function (t) { throw new Error(t || ("HTTP " + res.status)); });
          }
          var reader = res.body.getReader(), decoder = new TextDecoder(), buffer = "", failed = null;
          function handle(line) {
            if (!line.trim()) return;
            var msg; try { msg = JSON.parse(line); } catch (e) { return; }
            if (msg.error) { failed = msg.error; status.textContent = "Failed: " + msg.error; return; }
            if (msg.total && msg.completed !== undefined) {
              bar.value = Math.floor(100 * msg.completed / msg.total);
            }
            status.textContent = msg.status + (msg.total ? " (" + bar.value + "%)" : "");
            if (msg.status === "success") { bar.value = 100; status.textContent = "Pulled."; }
          }
          function pump() {
            return reader.read().then(function (r) {
              if (r.done) { handle(buffer); button.disabled = false; form.dataset.done = failed ? "error" : "ok"; return; }
              buffer += decoder.decode(r.value, { stream: true });
              var lines = buffer.split("\n"); buffer = lines.pop();
              lines.forEach(handle);
              return pump();
            });
          }
          return pump();
        })
        .catch(function (error) {
          status.textContent = "Failed: " + error.message; button.disabled = false; form.dataset.done = "error";
        });
    });
  });
})();
