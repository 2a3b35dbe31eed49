// Live updates without reloading: the server sends the same fragment when it changes.
// A file of its own, not inline, so that the page's CSP allows no inline script at all.
if (window.EventSource) {
  const source = new EventSource("/events");
  source.addEventListener("live", (e) => { document.getElementById("live").innerHTML = e.data; });
}
