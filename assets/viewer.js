// The script viewer's keyboard navigation: left/right arrows (and K/J) move to the previous or
// next page and give it focus, so the pages can be read without a mouse.
(() => {
  const pages = Array.from(document.querySelectorAll('.nca-script__page'));
  if (pages.length === 0) return;
  let current = 0;
  const go = (i) => {
    current = Math.max(0, Math.min(pages.length - 1, i));
    pages[current].focus();
    pages[current].scrollIntoView({ block: 'start' });
    history.replaceState(null, '', '#' + pages[current].id);
  };
  const fromHash = pages.findIndex((p) => '#' + p.id === location.hash);
  if (fromHash >= 0) current = fromHash;
  document.addEventListener('keydown', (e) => {
    if (e.target.closest('input, textarea, select') || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === 'ArrowRight' || e.key === 'j') { e.preventDefault(); go(current + 1); }
    if (e.key === 'ArrowLeft' || e.key === 'k') { e.preventDefault(); go(current - 1); }
  });
  for (const a of document.querySelectorAll('[data-nca-next], [data-nca-prev]')) {
    a.addEventListener('click', (e) => {
      e.preventDefault();
      const i = pages.indexOf(a.closest('.nca-script__page'));
      go(a.hasAttribute('data-nca-next') ? i + 1 : i - 1);
    });
  }
})();
