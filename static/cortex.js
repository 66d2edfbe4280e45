// Cortex: the little htmx does not do by itself. Loaded after htmx and its ws extension.
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  // A job page's stream must resume after the last event this page applied. The ws extension
  // reconnects to the address it first opened, whose `after` is where the page began; so on
  // every (re)connect `after` is taken from the cursor element the stream keeps up to date.
  htmx.createWebSocket = function (url) {
    const address = new URL(url);
    document.querySelectorAll("[data-stream-cursor]").forEach(function (source) {
      const sourcePath = new URL(source.getAttribute("ws-connect"), window.location.href).pathname;
      const cursor = document.getElementById(source.dataset.streamCursor);
      if (sourcePath === address.pathname && cursor && cursor.dataset.after) {
        address.searchParams.set("after", cursor.dataset.after);
      }
    });
    const socket = new WebSocket(address.toString());
    socket.binaryType = htmx.config.wsBinaryType;
    return socket;
  };

  // Show whether a stream is live, so nobody waits on a page that stopped updating.
  function markStream(state) {
    return function (event) {
      if (event.target instanceof Element && event.target.hasAttribute("data-state")) {
        event.target.dataset.state = state;
      }
    };
  }
  document.addEventListener("htmx:wsOpen", markStream("live"));
  document.addEventListener("htmx:wsClose", markStream("offline"));

  // A form that previews its changes before they are saved (the tool settings) marks them
  // `data-unsaved`: leaving the page then asks first, except by saving them.
  let saving = false;
  document.addEventListener("submit", function (event) {
    if (event.target instanceof Element && event.target.hasAttribute("data-warn-unsaved")) {
      saving = true;
    }
  });
  window.addEventListener("beforeunload", function (event) {
    if (!saving && document.querySelector("[data-warn-unsaved] [data-unsaved]")) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  // A decision answers with its card, in place (components.html#confirmation-card): the button
  // that was pressed is gone with the old card. Focus moves on to the next call that waits (or,
  // with none left, to the decision written on the card), or to the card's error when the
  // decision was refused; and what was decided is read out in the live region, where it stays
  // long enough to be read after the card itself has left the page.
  const ANNOUNCEMENT_SECONDS = 12;
  let announcementTimer = null;

  function announce(note) {
    const region = document.getElementById("announcer");
    if (!region) return;
    region.classList.toggle("alert-warning", note.classList.contains("alert-warning"));
    region.classList.toggle("alert-success", !note.classList.contains("alert-warning"));
    region.textContent = note.textContent.replace(/\s+/g, " ").trim();
    clearTimeout(announcementTimer);
    announcementTimer = setTimeout(function () { region.textContent = ""; }, ANNOUNCEMENT_SECONDS * 1000);
  }

  // The next waiting card itself, not its Approve button: a second Enter pressed out of habit must
  // not approve a call the person has not looked at. Tab from there reaches its buttons.
  function nextWaitingCard(card) {
    const waiting = Array.from(document.querySelectorAll("article.confirm-card:not(.decided)"));
    const after = waiting.filter(function (other) {
      return card.compareDocumentPosition(other) & Node.DOCUMENT_POSITION_FOLLOWING;
    });
    return after[0] || waiting[waiting.length - 1] || null;
  }

  // The card of the decision on its way. Its answer may come second: the stream can redraw the
  // card (decided) before the request's own answer, which then lands in a card no longer shown.
  let deciding = null;
  document.addEventListener("htmx:beforeRequest", function (event) {
    const card = event.target instanceof Element ? event.target.closest("article.confirm-card") : null;
    if (card) deciding = card.id;
  });

  // `answered` by the request itself: only then does an error on the card belong to this decision.
  function settleDecision(answered) {
    if (!deciding) return;
    const card = document.getElementById(deciding);
    if (!card) {  // a job page's stream took the decided card away before its answer came
      deciding = null;
      const next = document.querySelector("article.confirm-card:not(.decided)");
      if (next) next.focus();
      return;
    }
    const problem = answered && (card.querySelector("[role=alert]") ||
      card.querySelector(".field-invalid input, .field-invalid textarea, .field-invalid select"));
    const note = card.querySelector(".decision-note");
    if (!problem && !note) return;  // not decided yet
    deciding = null;
    if (note) announce(note);
    const target = problem || nextWaitingCard(card) || note;
    target.focus();
  }

  // After the settle: until then the new card still wears the old one's classes.
  document.addEventListener("htmx:afterSettle", function (event) {
    const swapped = event.detail.target;
    if (swapped && deciding && swapped.id === deciding) settleDecision(true);
  });

  // The streams redraw whole parts of a page (the inbox, a job's calls): whatever had the focus
  // there is replaced by its new copy, which gets the focus back when it has an id.
  let focusedId = null;
  document.addEventListener("htmx:wsBeforeMessage", function () {
    const active = document.activeElement;
    focusedId = active && active !== document.body ? active.id || null : null;
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    if (focusedId && (!document.activeElement || document.activeElement === document.body)) {
      const again = document.getElementById(focusedId);
      if (again) again.focus({ preventScroll: true });
    }
    focusedId = null;
    settleDecision(false);
  });

  // A stream may redraw a card the person is editing (a newer copy of the same waiting call, or
  // the whole list when another call changed). While the call waits with the same arguments, the
  // new copy keeps what they opened and typed; a call decided or changed meanwhile shows as it is.
  function digestOf(card) {
    const field = card.querySelector("input[name=args_digest]");
    return field ? field.value : null;
  }
  let editing = [];
  document.addEventListener("htmx:wsBeforeMessage", function () {
    editing = Array.from(document.querySelectorAll("article.confirm-card:not(.decided)")).map(function (card) {
      const details = card.querySelector("details.edit-args");
      const fields = details ? Array.from(details.querySelectorAll("input[name], textarea[name], select[name]"))
        .filter(function (field) { return field.type !== "hidden"; })
        .map(function (field) { return [field.name, field.type === "checkbox" ? field.checked : field.value]; }) : [];
      return { id: card.id, digest: digestOf(card), open: Boolean(details && details.open), fields: fields };
    }).filter(function (state) { return state.open; });
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    editing.forEach(function (state) {
      const card = document.getElementById(state.id);
      if (!card || card.classList.contains("decided") || digestOf(card) !== state.digest) return;
      const details = card.querySelector("details.edit-args");
      if (!details || details.open) return;  // an open one was drawn by the server: it knows better
      details.open = true;
      state.fields.forEach(function (pair) {
        const field = details.querySelector("[name='" + CSS.escape(pair[0]) + "']");
        if (!field) return;
        if (field.type === "checkbox") field.checked = pair[1]; else field.value = pair[1];
      });
    });
    editing = [];
  });

  // A "Copy" button copies the text of the element it names (a new API token): the server sends
  // the value once, so copying it exactly matters. Where the clipboard is not allowed, the text is
  // selected for the person to copy.
  document.addEventListener("click", function (event) {
    const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    const said = document.getElementById(button.getAttribute("aria-describedby"));
    if (!source) return;
    function selectIt() {
      window.getSelection().selectAllChildren(source);
      if (said) said.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
    if (!navigator.clipboard) { selectIt(); return; }
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      if (said) said.textContent = "Copied.";
    }, selectIt);
  });

  // Browser notifications (Settings → Notifications): the person's stream sends what happened to
  // their jobs; each is shown once per browser (its tag), and a click opens the job's page.
  const notified = new Set();
  document.addEventListener("htmx:wsAfterMessage", function () {
    const box = document.getElementById("browser-notifications");
    if (!box || !("Notification" in window) || Notification.permission !== "granted") return;
    box.querySelectorAll("[data-notification]").forEach(function (item) {
      if (notified.has(item.dataset.tag)) return;
      notified.add(item.dataset.tag);
      const note = new Notification(item.dataset.title, { body: item.dataset.body, tag: item.dataset.tag });
      note.addEventListener("click", function () {
        window.focus();
        window.location.href = item.dataset.url;
      });
    });
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-notify-permission]");
    if (!button || !("Notification" in window)) return;
    const state = document.querySelector("[data-notify-permission-state]");
    Notification.requestPermission().then(function (permission) {
      if (state) state.textContent = permission === "granted" ? "Allowed." : "Not allowed: the browser will not show them.";
    });
  });

  // The time a waiting call has left before it expires, counted down on the page.
  function showTimeLeft() {
    document.querySelectorAll("time[data-countdown]").forEach(function (time) {
      const left = Math.max(0, Math.round((new Date(time.getAttribute("datetime")) - Date.now()) / 1000));
      const minutes = Math.floor(left / 60);
      const hours = Math.floor(minutes / 60);
      time.textContent = hours ? hours + " h " + (minutes % 60) + " min" : minutes ? minutes + " min " + (left % 60) + " s" : left + " s";
    });
  }
  showTimeLeft();
  setInterval(showTimeLeft, 1000);

  // The server closes a stream with 4401 when its session ended (signed out in another tab, or
  // expired): load the page again, which leads to the sign-in page and from there back here.
  document.addEventListener("htmx:wsClose", function (event) {
    if (event.detail && event.detail.event && event.detail.event.code === 4401) {
      window.location.reload();
    }
  });
})();
