// Inactivity warning: before the session's idle limit, offer to stay signed in; at the limit,
// go to the sign-in page, which brings the user back here afterwards.
(function () {
  var meta = function (n) { var m = document.querySelector('meta[name="' + n + '"]'); return m ? m.content : null; };
  var idle = parseInt(meta('nca-idle-seconds'), 10), warn = parseInt(meta('nca-warning-seconds'), 10);
  var csrf = meta('nca-csrf');
  if (!idle || !warn) return;
  var dialog = document.getElementById('timeout-warning'), stay = document.getElementById('timeout-stay');
  var remaining = document.getElementById('timeout-remaining');
  var warnTimer, endTimer, tick;
  function schedule() {
    clearTimeout(warnTimer); clearTimeout(endTimer); clearInterval(tick);
    warnTimer = setTimeout(show, (idle - warn) * 1000);
    endTimer = setTimeout(function () {
      saveDrafts();
      window.location.href = '/sign-in?timeout=1&next=' + encodeURIComponent(location.pathname + location.search);
    }, idle * 1000);
  }
  function show() {
    var end = Date.now() + warn * 1000;
    var update = function () {
      var s = Math.max(0, Math.round((end - Date.now()) / 1000));
      remaining.textContent = s >= 60 ? Math.ceil(s / 60) + ' minutes' : s + ' seconds';
    };
    update(); tick = setInterval(update, 1000);
    if (dialog.showModal) { dialog.showModal(); } else { dialog.setAttribute('open', ''); }
    stay.focus();
  }
  stay.addEventListener('click', function () {
    fetch('/session/keepalive', { method: 'POST', headers: { 'x-csrf-token': csrf }, credentials: 'same-origin' })
      .then(function (r) { if (r.ok) { dialog.close ? dialog.close() : dialog.removeAttribute('open'); schedule(); } else { location.reload(); } });
  });
  // Forms marked data-autosave keep a draft on the server as the user types, so a time-out or
  // a closed tab loses nothing: returning to the page brings the draft back.
  var pending = null;
  function saveDrafts() {
    clearTimeout(pending);
    document.querySelectorAll('form[data-autosave]').forEach(function (f) {
      var body = new URLSearchParams(new FormData(f));
      body.delete('csrf');
      fetch(f.getAttribute('data-autosave'), {
        method: 'POST', keepalive: true, credentials: 'same-origin',
        headers: { 'x-csrf-token': csrf, 'content-type': 'application/x-www-form-urlencoded' }, body: body
      }).then(function (r) {
        var s = document.getElementById('autosave-status');
        if (s && r.ok) { s.textContent = 'Draft saved at ' + new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); }
      }).catch(function () {});
    });
  }
  document.querySelectorAll('form[data-autosave]').forEach(function (f) {
    var later = function () { clearTimeout(pending); pending = setTimeout(saveDrafts, 800); };
    f.addEventListener('input', later);
    f.addEventListener('change', later);
  });
  schedule();
})();
