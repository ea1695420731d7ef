// fleetgate console, overview page: live numbers and charts from the gateway's event stream.
// uPlot draws the charts; this file only feeds it. No inline script (the page's CSP forbids it).
// A module script (deferred, its own scope): runs after uPlot's, before DOMContentLoaded.
var charts = {};
var data = { t: [], connected: [], msgIn: [], msgOut: [], connects: [], refusals: [] };
var KEEP = 150;

function text(id, value) {
  var el = document.getElementById(id);
  if (el) el.textContent = value;
}

function rows(id, items, cells) {
  var el = document.getElementById(id);
  var p;
  if (!el) return;
  if (items.length === 0) {
    el.innerHTML = '';
    p = document.createElement('p');
    p.className = 'empty';
    p.textContent = 'none';
    el.appendChild(p);
    return;
  }
  var table = document.createElement('table');
  var body = document.createElement('tbody');
  items.forEach(function (item) {
    var tr = document.createElement('tr');
    var values = cells(item);
    values.forEach(function (c, i) {
      var td = document.createElement('td');
      td.textContent = String(c);
      if (i === values.length - 1) td.className = 'num';
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  table.appendChild(body);
  el.innerHTML = '';
  el.appendChild(table);
}

function chart(id, series) {
  var el = document.getElementById(id);
  if (!el || typeof uPlot === 'undefined') return null;
  var opts = {
    width: Math.max(el.clientWidth, 300),
    height: 180,
    series: [{}].concat(
      series.map(function (s) {
        return { label: s[0], stroke: s[1], width: 2 };
      }),
    ),
    scales: {
      x: {
        time: true,
        range: function (_u, _min, max) {
          return [max - 300, max];
        },
      },
    }, // the last five minutes
    axes: [{}, { size: 50 }],
    legend: { show: true },
  };
  return new uPlot(
    opts,
    [[]].concat(
      series.map(function () {
        return [];
      }),
    ),
    el,
  );
}

function push(s) {
  data.t.push(s.t / 1000);
  data.connected.push(s.connected);
  data.msgIn.push(s.messagesInPerSec);
  data.msgOut.push(s.messagesOutPerSec);
  data.connects.push(s.connectsPerSec);
  data.refusals.push(s.refusalsPerSec);
  Object.keys(data).forEach(function (k) {
    if (data[k].length > KEEP) data[k].shift();
  });
}

function draw() {
  if (charts.connected) charts.connected.setData([data.t, data.connected]);
  if (charts.messages) charts.messages.setData([data.t, data.msgIn, data.msgOut]);
  if (charts.connects) charts.connects.setData([data.t, data.connects, data.refusals]);
}

function show(s) {
  text('v-connected', s.connected);
  text('v-connects', s.connectsPerSec.toFixed(1));
  text('v-messages', (s.messagesInPerSec + s.messagesOutPerSec).toFixed(1));
  text('v-refusals', s.refusalsPerSec.toFixed(1));
  text('v-cuts', s.cutsByRevocation);
  text('v-p99', s.handshakeP99Ms === null ? '–' : s.handshakeP99Ms.toFixed(1));
  rows('t-connected', s.connectedBy, function (c) {
    return [c.type, c.transport, c.count];
  });
  rows('t-refusals', s.refusalsByCode, function (r) {
    return [r.code, r.count];
  });
  if (s.nodes)
    text(
      'v-nodes',
      'Cluster: the figures of ' +
        s.nodes.length +
        ' node' +
        (s.nodes.length === 1 ? '' : 's') +
        ' (' +
        s.nodes.join(', ') +
        '), summed; a node that does not answer is left out of a sample.',
    );
}

function start() {
  if (!document.getElementById('chart-connected')) return;
  charts.connected = chart('chart-connected', [['connected', '#1f6feb']]);
  charts.messages = chart('chart-messages', [
    ['in / s', '#2e7d32'],
    ['out / s', '#8250df'],
  ]);
  charts.connects = chart('chart-connects', [
    ['connects / s', '#1f6feb'],
    ['refusals / s', '#c62828'],
  ]);
  var source = new EventSource('/events');
  source.addEventListener('history', function (e) {
    JSON.parse(e.data).forEach(push);
    draw();
  });
  source.onmessage = function (e) {
    var s = JSON.parse(e.data);
    push(s);
    show(s);
    draw();
    document.body.setAttribute('data-live', String(s.t));
  };
  source.addEventListener('refused', function () {
    source.close();
    text('live-state', 'Live updates stopped: this certificate is no longer accepted. Reload to try again.');
  });
  source.onerror = function () {
    text('live-state', 'Live updates interrupted; reconnecting…');
  };
}

document.addEventListener('DOMContentLoaded', start);
