/*! kizuna.js — Kizuna's first-party tracking snippet (Segment spec over /v1/b). */
(function () {
  "use strict";
  var w = window, d = document, VERSION = "1.0.0";
  if (w.kizuna && w.kizuna.loaded) return;
  var early = Array.isArray(w.kizuna) ? w.kizuna : [];

  var script = d.currentScript || (function () {
    var s = d.querySelectorAll('script[src*="kizuna.js"]');
    return s[s.length - 1];
  })();
  function attr(n) { return script ? script.getAttribute(n) : null; }
  function on(n, dflt) { var v = attr(n); return v == null ? dflt : v !== "false"; }
  var cfg = w.kizunaConfig || {};
  var writeKey = attr("data-write-key") || cfg.writeKey;
  var host = (attr("data-host") || cfg.host ||
    (script && script.src ? new URL(script.src, location.href).origin : location.origin)).replace(/\/$/, "");
  var flushMs = parseInt(attr("data-flush-interval") || cfg.flushInterval || "1000", 10);
  var MAX_BATCH = 20, MAX_QUEUE = 500, KEY_Q = "kz_queue", KEY_U = "kz_uid", COOKIE = "kz_aid";
  var dnt = on("data-respect-dnt", !!cfg.respectDnt) &&
    (navigator.doNotTrack === "1" || navigator.doNotTrack === "yes" || w.doNotTrack === "1" ||
     navigator.globalPrivacyControl === true);

  function uuid() {
    if (w.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16); crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }
  function getCookie(n) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + n + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function setCookie(n, v, days) {
    var c = n + "=" + encodeURIComponent(v) + "; path=/; max-age=" + days * 86400 + "; SameSite=Lax";
    var dom = attr("data-cookie-domain") || cfg.cookieDomain;
    if (dom) c += "; domain=" + dom;
    if (location.protocol === "https:") c += "; Secure";
    d.cookie = c;
  }
  function store(k, v) { try { v == null ? localStorage.removeItem(k) : localStorage.setItem(k, v); } catch (e) { /* private mode */ } }
  function load(k) { try { return localStorage.getItem(k); } catch (e) { return null; } }

  var anonymousId = getCookie(COOKIE) || uuid();
  if (!dnt) setCookie(COOKIE, anonymousId, 730);
  var userId = load(KEY_U);
  var queue = [];
  try { queue = JSON.parse(load(KEY_Q) || "[]") || []; } catch (e) { queue = []; }
  var timer = null, inflight = false, backoff = flushMs;

  function campaign() {
    var out = {}, p = new URLSearchParams(location.search);
    [["utm_source", "source"], ["utm_medium", "medium"], ["utm_campaign", "name"],
     ["utm_term", "term"], ["utm_content", "content"]].forEach(function (k) {
      var v = p.get(k[0]); if (v) out[k[1]] = v;
    });
    return out;
  }
  function page() {
    return { path: location.pathname, referrer: d.referrer, search: location.search,
      title: d.title, url: location.href };
  }
  function context() {
    var c = { library: { name: "kizuna.js", version: VERSION }, page: page(),
      userAgent: navigator.userAgent, locale: navigator.language };
    try { c.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* old browser */ }
    var k = campaign(); if (Object.keys(k).length) c.campaign = k;
    return c;
  }
  function save() { store(KEY_Q, JSON.stringify(queue.slice(-MAX_QUEUE))); }
  function schedule(ms) {
    if (timer) return;
    timer = setTimeout(function () { timer = null; flush(); }, ms == null ? flushMs : ms);
  }
  function enqueue(type, fields) {
    if (dnt || !writeKey) return;
    var m = { type: type, messageId: uuid(), anonymousId: anonymousId,
      timestamp: new Date().toISOString(), context: context() };
    if (userId) m.userId = userId;
    for (var k in fields) if (fields[k] !== undefined) m[k] = fields[k];
    queue.push(m);
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    save();
    if (queue.length >= MAX_BATCH) flush(); else schedule();
  }
  function body(batch) {
    return JSON.stringify({ batch: batch, sentAt: new Date().toISOString(), writeKey: writeKey });
  }
  // Sends what is queued. Kept until the server says 200 (or refuses the batch for good with
  // a 4xx other than 429); each message keeps its messageId, so a retry counts once.
  function flush(useBeacon) {
    if (!queue.length) return;
    var batch = queue.slice(0, 100);
    if (useBeacon && navigator.sendBeacon) {
      if (navigator.sendBeacon(host + "/v1/b", new Blob([body(batch)], { type: "text/plain" }))) {
        queue.splice(0, batch.length); save();
      }
      return;
    }
    if (inflight) return;
    inflight = true;
    var text = body(batch);
    fetch(host + "/v1/b", { method: "POST", body: text, mode: "cors", credentials: "omit",
      keepalive: text.length < 60000, headers: { "Content-Type": "text/plain" } })
      .then(function (r) {
        inflight = false;
        if (r.ok || (r.status >= 400 && r.status < 500 && r.status !== 429)) {
          queue.splice(0, batch.length); save(); backoff = flushMs;
          if (queue.length) schedule(0);
        } else {
          retry(r.headers.get("Retry-After"));
        }
      }, function () { inflight = false; retry(null); });
  }
  function retry(after) {
    var s = parseInt(after, 10);
    var ms = s > 0 ? s * 1000 : backoff;
    backoff = Math.min(backoff * 2, 60000);
    schedule(ms);
  }

  var api = {
    loaded: true,
    version: VERSION,
    disabled: dnt || !writeKey,
    anonymousId: function () { return anonymousId; },
    userId: function () { return userId; },
    page: function (name, properties) {
      if (typeof name === "object" && name !== null) { properties = name; name = undefined; }
      var p = page(); for (var k in properties || {}) p[k] = properties[k];
      enqueue("page", { name: name, properties: p });
    },
    track: function (event, properties) { enqueue("track", { event: event, properties: properties || {} }); },
    identify: function (id, traits) {
      if (typeof id === "object" && id !== null) { traits = id; id = undefined; }
      if (id != null && id !== "") { userId = String(id); store(KEY_U, userId); }
      enqueue("identify", { traits: traits || {} });
    },
    group: function (groupId, traits) { enqueue("group", { groupId: String(groupId), traits: traits || {} }); },
    alias: function (newId, previousId) {
      enqueue("alias", { userId: String(newId), previousId: previousId || userId || anonymousId });
      userId = String(newId); store(KEY_U, userId);
    },
    reset: function () {
      userId = null; store(KEY_U, null); anonymousId = uuid();
      if (!dnt) setCookie(COOKIE, anonymousId, 730);
    },
    flush: function () { flush(false); }
  };
  w.kizuna = api;

  // Forms: a submit with an e-mail field identifies the visitor (R-TRACK-2).
  if (on("data-track-forms", cfg.trackForms !== false)) {
    d.addEventListener("submit", function (e) {
      var f = e.target;
      if (!f || !f.elements) return;
      var email = f.querySelector('input[type="email"], input[name="email"]');
      var name = f.getAttribute("name") || f.id || f.getAttribute("action") || "form";
      if (email && email.value) {
        var traits = { email: email.value };
        ["firstName", "lastName", "name", "company", "phone", "title"].forEach(function (k) {
          var el = f.querySelector('[name="' + k + '"]'); if (el && el.value) traits[k] = el.value;
        });
        api.identify(traits);
      }
      api.track("form.submitted", { form: name, url: location.href });
      flush(true);
    }, true);
  }
  // Downloads: a click on a document link is a content download.
  if (on("data-track-downloads", cfg.trackDownloads !== false)) {
    d.addEventListener("click", function (e) {
      var a = e.target && e.target.closest && e.target.closest("a[href]");
      if (a && /\.(pdf|zip|docx?|xlsx?|pptx?|csv)(\?|#|$)/i.test(a.getAttribute("href"))) {
        api.track("content.downloaded", { url: a.href, name: (a.textContent || "").trim().slice(0, 200) });
      }
    }, true);
  }
  w.addEventListener("pagehide", function () { flush(true); });
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") flush(true); });

  if (on("data-auto-page", cfg.autoPage !== false)) api.page();
  early.forEach(function (call) {
    if (call && api[call[0]]) api[call[0]].apply(api, call.slice(1));
  });
  if (queue.length) schedule();
})();
