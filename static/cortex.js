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

  // The server closes a stream with 4401 when its session ended (signed out in another tab, or
  // expired): load the page again, which leads to the sign-in page and from there back here.
  document.addEventListener("htmx:wsClose", function (event) {
    if (event.detail && event.detail.event && event.detail.event.code === 4401) {
      window.location.reload();
    }
  });
})();
