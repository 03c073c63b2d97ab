// tessera's live load-balancer page (served by tessera_stack.live_page behind the portal).
//
// Sends GET /api/me through nginx at a steady rate with the credential the current
// row's replicas accept (the portal's session cookie in rows 4 and 6, an access token
// in row 5, a replica's own session in rows 1-3), and shows which replica answered
// each request (X-Served-By) and whether it was authenticated (X-Auth-Method), per
// phase: a row change or an operator control starts a new one, so what a kill does
// is counted apart from what came before. No inline script: the CSP forbids it.
"use strict";

(() => {
  const STATE_POLL_MS = 1000;
  const ACTION_POLL_MS = 500;
  const REQUEST_TIMEOUT_MS = 3000;
  const MAX_IN_FLIGHT = 16;
  const TIMELINE_SECONDS = 30;
  const RECENT = 60;
  const RECENT_WINDOW_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const live = {
    stack: null, // GET /live/state
    rowKey: "", // "4 round_robin": a change starts a phase
    login: "session", // how this row logs in: session | token | replica
    bearer: null, // row 5's access token (memory only)
    signedIn: false, // for rows 1-3 and 5
    running: true,
    rate: 10,
    inFlight: 0,
    phases: [],
    events: [], // {at, replica, status, ok}
    seconds: new Map(), // whole second -> {replica -> count, failed}
    colors: new Map(), // replica id -> colour index
    action: null, // the operator control being watched
    drawnStack: "", // the state last drawn
    stateAt: "", // when it was read
    timer: null,
  };

  // -- phases -------------------------------------------------------------------------

  function newPhase(label) {
    const phase = { number: live.phases.length + 1, label, sent: 0, ok: 0, failed: 0, replicas: new Map(), statuses: new Map() };
    live.phases.push(phase);
    render();
    return phase;
  }

  function currentPhase() {
    return live.phases[live.phases.length - 1];
  }

  function colorOf(replica) {
    if (!live.colors.has(replica)) live.colors.set(replica, live.colors.size % 8);
    return live.colors.get(replica);
  }

  function record(phase, replica, status, ok) {
    const at = Date.now();
    phase.sent += 1;
    if (ok) phase.ok += 1;
    else phase.failed += 1;
    const counts = phase.replicas.get(replica) || { answered: 0, ok: 0, failed: 0 };
    counts.answered += 1;
    if (ok) counts.ok += 1;
    else counts.failed += 1;
    phase.replicas.set(replica, counts);
    phase.statuses.set(status, (phase.statuses.get(status) || 0) + 1);
    live.events.push({ at, replica, status, ok });
    if (live.events.length > 5000) live.events.splice(0, live.events.length - 5000);
    const second = Math.floor(at / 1000);
    const bucket = live.seconds.get(second) || { failed: 0, by: new Map() };
    if (ok) bucket.by.set(replica, (bucket.by.get(replica) || 0) + 1);
    else bucket.failed += 1;
    live.seconds.set(second, bucket);
    for (const old of live.seconds.keys()) if (old < second - TIMELINE_SECONDS) live.seconds.delete(old);
  }

  // -- traffic --------------------------------------------------------------------------

  function needsSignIn() {
    return live.login !== "session" && !live.signedIn;
  }

  async function sendOne() {
    if (!live.running || needsSignIn() || live.phases.length === 0) return;
    if (live.inFlight >= MAX_IN_FLIGHT) return; // the page never piles up requests
    const phase = currentPhase();
    live.inFlight += 1;
    const init = { cache: "no-store", redirect: "manual", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
    if (live.login === "token") {
      init.credentials = "omit";
      init.headers = { Authorization: `Bearer ${live.bearer}` };
    } else {
      init.credentials = "same-origin";
    }
    try {
      const response = await fetch("/api/me", init);
      const replica = response.headers.get("X-Served-By") || "nginx";
      const method = response.headers.get("X-Auth-Method") || "none";
      record(phase, replica, response.status, response.status === 200 && method !== "none");
      if (live.login === "token" && response.status === 401 && init.headers && init.headers.Authorization === `Bearer ${live.bearer}`) {
        // Every row 5 replica takes a good token: this one expired (or was revoked).
        live.signedIn = false;
        live.bearer = null;
        $("signin-status").textContent = "the access token was refused (expired or revoked): sign in again";
        renderSignIn();
      }
    } catch (error) {
      record(phase, "no answer", 0, false);
    } finally {
      live.inFlight -= 1;
    }
  }

  function schedule() {
    if (live.timer !== null) clearInterval(live.timer);
    live.timer = setInterval(sendOne, Math.round(1000 / live.rate));
  }

  // -- the row, and signing in for it --------------------------------------------------------

  const SIGN_IN_WHY = {
    token: "Row 5's replicas accept only access tokens (JWTs): sign in to get one from the auth service (POST /auth/login, credential \"token\"). The token stays in this page's memory.",
    replica: "Rows 1-3 keep sessions in each replica's memory: sign in at a replica (POST /api/login). Only the replica that took the login will know you.",
  };

  async function signIn(event) {
    event.preventDefault();
    const username = $("signin-username").value;
    const password = $("signin-password").value;
    const status = $("signin-status");
    status.textContent = "signing in …";
    status.className = "";
    const toReplica = live.login === "replica";
    const body = toReplica ? { username, password } : { username, password, credential: "token" };
    try {
      const response = await fetch(toReplica ? "/api/login" : "/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: toReplica ? "same-origin" : "omit",
        body: JSON.stringify(body),
        redirect: "manual",
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        status.textContent = `refused (${response.status}): ${answer.detail || answer.error || "no detail"}`;
        status.className = "error";
        return;
      }
      if (!toReplica) live.bearer = answer.access_token;
      live.signedIn = true;
      $("signin-password").value = "";
      const where = toReplica ? ` on replica ${response.headers.get("X-Served-By")}` : "";
      status.textContent = `signed in${where}`;
      newPhase(`row ${live.stack.row.number}, signed in${where}`);
      renderSignIn();
    } catch (error) {
      status.textContent = `no answer: ${error}`;
      status.className = "error";
    }
  }

  function renderSignIn() {
    // Shown for the whole row, signed in or not: a replica's loss (rows 2-3) or an
    // expired token logs you out, and you sign in again here.
    const section = $("signin");
    section.hidden = live.login === "session";
    if (!section.hidden) $("signin-why").textContent = SIGN_IN_WHY[live.login] || "";
  }

  function rowChanged(stack) {
    const row = stack.row;
    live.login = row ? row.login : "session";
    live.bearer = null;
    live.signedIn = false;
    renderSignIn();
    newPhase(rowPhaseLabel());
  }

  function rowPhaseLabel() {
    const row = live.stack && live.stack.row;
    const label = row ? `row ${row.number} (${row.label})` : "no row";
    return needsSignIn() ? `${label}, not signed in` : label;
  }

  async function refreshState() {
    try {
      const response = await fetch("/live/state", { cache: "no-store", redirect: "manual" });
      if (response.type === "opaqueredirect" || response.status === 401) {
        $("traffic-status").textContent = "the portal session is gone: reload to sign in again";
        live.running = false;
        return;
      }
      if (!response.ok) {
        // 503: the auth service cannot check the portal session (Redis gone, say).
        const answer = await response.json().catch(() => ({}));
        $("stack-status").textContent = `the stack's state is from ${live.stateAt || "never"}: /live/state answered ${response.status} (${answer.error || "no detail"})`;
        return;
      }
      const stack = await response.json();
      live.stateAt = new Date().toISOString().slice(11, 19);
      $("stack-status").textContent = "";
      live.stack = stack;
      const key = stack.row ? `${stack.row.number} ${stack.policy}` : "";
      if (key !== live.rowKey) {
        live.rowKey = key;
        rowChanged(stack);
      }
      renderStack();
    } catch (error) {
      // The live page itself restarting: keep the last state.
    }
  }

  async function whoAmI() {
    const response = await fetch("/auth/me", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) return;
    const me = await response.json();
    $("whoami").textContent = me.username || me.user?.username || "?";
    $("signin-username").value = me.username || me.user?.username || "";
  }

  // -- operator controls ---------------------------------------------------------------------

  function operatorHeaders() {
    return {
      "Content-Type": "application/json",
      "X-Operator-Secret": $("operator-secret").value.trim(),
    };
  }

  function showOperator(text, failed) {
    $("operator-status").textContent = text;
    $("operator-status").className = failed ? "error" : "";
  }

  async function control(action, body) {
    showOperator(`${action}: sending …`, false);
    let response;
    try {
      response = await fetch(`/live/actions/${action}`, {
        method: "POST",
        headers: operatorHeaders(),
        body: JSON.stringify(body || {}),
        redirect: "manual",
      });
    } catch (error) {
      showOperator(`${action}: not sent (${error.message}); try again`, true);
      return;
    }
    const answer = await response.json().catch(() => ({}));
    if (response.status !== 202) {
      showOperator(`${action}: refused (${response.status}): ${answer.detail || answer.error || ""}`, true);
      return;
    }
    newPhase(`after ${answer.command}`);
    showOperator(`running: ${answer.command} …`, false);
    live.action = answer;
    watchAction();
  }

  async function watchAction() {
    const watched = live.action;
    if (!watched) return;
    let response;
    try {
      response = await fetch("/live/actions/latest", { headers: operatorHeaders(), cache: "no-store" });
    } catch (error) {
      setTimeout(watchAction, ACTION_POLL_MS); // the live page restarting: ask again
      return;
    }
    if (response.status === 404 || response.status === 403) {
      // The live page restarted (it forgot the control) or the secret was changed.
      live.action = null;
      showOperator(`${watched.command}: its outcome is unknown (${response.status})`, true);
      return;
    }
    const latest = await response.json().catch(() => ({}));
    if (response.ok && latest.number === watched.number && latest.status !== "running") {
      live.action = null;
      $("operator-output").textContent = latest.output;
      showOperator(`${latest.command}: ${latest.status}`, latest.status !== "done");
      if (latest.action === "row") {
        // New replicas: the sessions they kept in memory and the sign-in are gone.
        live.signedIn = false;
        live.bearer = null;
        $("signin-status").textContent = "";
        renderSignIn();
      }
      await refreshState();
      // After a row switch (to the same row too) or `up`, the replicas are new: what
      // comes next is the row's own behaviour, not the switch's.
      if ((latest.action === "row" || latest.action === "up") && currentPhase().label.startsWith("after ")) {
        newPhase(rowPhaseLabel());
      }
      return;
    }
    setTimeout(watchAction, ACTION_POLL_MS);
  }

  // -- rendering --------------------------------------------------------------------------------

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function pct(part, whole) {
    return whole ? Math.round((100 * part) / whole) : 0;
  }

  function shareCell(row, replica, part, whole) {
    const td = cell(row, "");
    const bar = document.createElement("span");
    bar.className = `bar r${colorOf(replica)}`;
    bar.style.width = `${pct(part, whole) * 1.5}px`;
    const label = document.createElement("span");
    label.className = "pct";
    label.textContent = `${pct(part, whole)}%`;
    td.append(label, " ", bar);
  }

  function renderStack() {
    const stack = live.stack;
    // Drawn only when it changed (the buttons are kept: syncButtons).
    const drawn = JSON.stringify(stack);
    if (!stack || drawn === live.drawnStack) return;
    live.drawnStack = drawn;
    const row = stack.row;
    $("row-number").textContent = row ? row.number : "?";
    $("row-label").textContent = row ? row.label : "the stack is not running";
    $("row-policy").textContent = stack.policy || "?";
    $("row-methods").textContent = row ? row.methods : "?";
    $("row-expectation").textContent = row ? row.expectation : "";
    const list = $("replica-list");
    list.replaceChildren();
    for (const replica of stack.replicas) {
      const span = document.createElement("span");
      span.textContent = `${replica.id} `;
      span.className = replica.alive ? "" : "dead";
      span.title = replica.alive ? "running" : "not running";
      list.appendChild(span);
    }
    $("redis-state").textContent = stack.redis;

    syncButtons($("row-controls"), "Switch to row: ", stack.rows.map((each) => ({
      data: { row: each.number },
      text: `${each.number}: ${each.label}`,
      className: row && row.number === each.number ? "current" : "",
      click: () => control("row", { row: each.number }),
    })));
    syncButtons($("replica-controls"), "Replicas: ", [
      ...stack.replicas.map((replica) => ({
        data: { kill: replica.id },
        text: `Kill ${replica.id}`,
        disabled: !replica.alive,
        click: () => control("kill-replica", { replica: replica.id }),
      })),
      { id: "add-replica", text: "Add a replica", click: () => control("add-replica") },
    ]);
    $("kill-redis").disabled = stack.redis === "external";
  }

  // The controls are updated in place and made anew only when the set of them changes: a
  // click whose press and release straddle a redraw lands on no button, and is lost.
  function syncButtons(container, label, specs) {
    const keys = JSON.stringify(specs.map((spec) => [spec.id, spec.data]));
    if (container.dataset.keys !== keys) {
      container.dataset.keys = keys;
      container.replaceChildren(label);
      for (const spec of specs) {
        const button = document.createElement("button");
        button.type = "button";
        Object.assign(button.dataset, spec.data || {});
        if (spec.id) button.id = spec.id;
        button.addEventListener("click", spec.click);
        container.append(button, " ");
      }
    }
    const buttons = container.querySelectorAll("button");
    specs.forEach((spec, index) => {
      const button = buttons[index];
      if (button.textContent !== spec.text) button.textContent = spec.text;
      button.className = spec.className || "";
      button.disabled = Boolean(spec.disabled);
    });
  }

  function render() {
    const phase = currentPhase();
    const replicaBody = $("replicas").tBodies[0];
    replicaBody.replaceChildren();
    if (phase) {
      const since = Date.now() - RECENT_WINDOW_MS;
      const recent = live.events.filter((e) => e.at >= since);
      const sorted = [...phase.replicas.entries()].sort((a, b) => a[0].localeCompare(b[0]));
      for (const [replica, counts] of sorted) {
        const tr = document.createElement("tr");
        tr.dataset.replica = replica;
        const name = cell(tr, "");
        const swatch = document.createElement("span");
        swatch.className = `swatch r${colorOf(replica)}`;
        name.append(swatch, replica);
        cell(tr, counts.answered, "num");
        cell(tr, counts.ok, "num");
        cell(tr, counts.failed, counts.failed ? "num failed-some" : "num");
        shareCell(tr, replica, counts.answered, phase.sent);
        shareCell(tr, replica, recent.filter((e) => e.replica === replica).length, recent.length);
        replicaBody.appendChild(tr);
      }
    }

    const phaseBody = $("phases").tBodies[0];
    phaseBody.replaceChildren();
    for (const each of [...live.phases].reverse().slice(0, 12)) {
      const tr = document.createElement("tr");
      tr.dataset.phase = each.number;
      cell(tr, each.number, "num");
      cell(tr, each.label).dataset.field = "label";
      cell(tr, each.sent, "num").dataset.field = "sent";
      cell(tr, each.ok, "num").dataset.field = "authenticated";
      cell(tr, each.failed, each.failed ? "num failed-some" : "num").dataset.field = "failed";
      const answered = [...each.replicas.entries()]
        .filter(([, counts]) => counts.ok > 0)
        .map(([replica]) => replica)
        .sort();
      cell(tr, answered.join(" ")).dataset.field = "replicas";
      const statuses = [...each.statuses.entries()].sort((a, b) => a[0] - b[0]);
      cell(tr, statuses.map(([code, n]) => `${code || "none"}×${n}`).join(" ")).dataset.field = "statuses";
      phaseBody.appendChild(tr);
    }

    const timeline = $("timeline");
    timeline.replaceChildren();
    const now = Math.floor(Date.now() / 1000);
    const peak = Math.max(1, ...[...live.seconds.values()].map((b) => b.failed + [...b.by.values()].reduce((x, y) => x + y, 0)));
    for (let second = now - TIMELINE_SECONDS + 1; second <= now; second += 1) {
      const column = document.createElement("div");
      column.className = "col";
      const bucket = live.seconds.get(second);
      if (bucket) {
        for (const [replica, count] of [...bucket.by.entries()].sort()) {
          const seg = document.createElement("div");
          seg.className = `seg r${colorOf(replica)}`;
          seg.style.height = `${(100 * count) / peak}%`;
          seg.title = `${replica}: ${count}`;
          column.appendChild(seg);
        }
        if (bucket.failed) {
          const seg = document.createElement("div");
          seg.className = "seg fail";
          seg.style.height = `${(100 * bucket.failed) / peak}%`;
          seg.title = `failed: ${bucket.failed}`;
          column.appendChild(seg);
        }
      }
      timeline.appendChild(column);
    }
    const legend = $("legend");
    legend.replaceChildren();
    for (const [replica, color] of [...live.colors.entries()].sort()) {
      const swatch = document.createElement("span");
      swatch.className = `swatch r${color}`;
      legend.append(swatch, replica);
    }
    const failSwatch = document.createElement("span");
    failSwatch.className = "swatch fail";
    legend.append(failSwatch, "failed");

    const recentList = $("recent");
    recentList.replaceChildren();
    for (const event of live.events.slice(-RECENT).reverse()) {
      const li = document.createElement("li");
      const time = new Date(event.at).toISOString().slice(11, 23);
      li.textContent = `${time} ${event.replica} ${event.status || "—"} ${event.ok ? "ok" : "FAILED"}`;
      if (!event.ok) li.className = "failed";
      recentList.appendChild(li);
    }
    const state = needsSignIn() ? "waiting for you to sign in" : live.running ? `sending ${live.rate} per second` : "paused";
    if (live.running || !$("traffic-status").textContent.startsWith("the portal")) {
      $("traffic-status").textContent = state;
    }
  }

  // -- start ----------------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("operator-form").addEventListener("submit", (event) => event.preventDefault());
    $("toggle").addEventListener("click", () => {
      live.running = !live.running;
      $("toggle").textContent = live.running ? "Pause" : "Resume";
    });
    $("rate").addEventListener("change", () => {
      live.rate = Number($("rate").value) || 10;
      schedule();
    });
    $("new-phase").addEventListener("click", () => newPhase(`${currentPhase()?.label || "phase"} (again)`));
    $("kill-redis").addEventListener("click", () => control("kill-redis"));
    $("bring-back").addEventListener("click", () => control("up"));
    whoAmI();
    refreshState();
    setInterval(refreshState, STATE_POLL_MS);
    setInterval(render, 500);
    schedule();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
