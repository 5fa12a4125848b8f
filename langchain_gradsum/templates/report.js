(function () {
  var root = document.documentElement;
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function setOpen(open) { all('details').forEach(function (d) { d.open = open; }); }
  var ex = document.getElementById('expand-all'), co = document.getElementById('collapse-all');
  if (ex) ex.addEventListener('click', function () { setOpen(true); });
  if (co) co.addEventListener('click', function () { setOpen(false); });
  function mark(cid, on) {
    all('.chart [data-cid]').forEach(function (g) {
      if (g.getAttribute('data-cid') === cid) g.classList.toggle('hl', on);
    });
  }
  all('.node[data-cid], details.cand > summary, table.val th[data-cid]').forEach(function (el) {
    var owner = el.hasAttribute('data-cid') ? el : el.parentNode;
    var cid = owner.getAttribute('data-cid');
    el.addEventListener('mouseenter', function () { mark(cid, true); });
    el.addEventListener('mouseleave', function () { mark(cid, false); });
  });
  function openTarget() {
    var id = decodeURIComponent((location.hash || '').slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === 'DETAILS') el.open = true;
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
  root.setAttribute('data-report-js', 'ready');
})();
