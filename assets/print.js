// Print buttons (inline scripts are not allowed by the CSP): the results letters' and the
// printable copies of completed activities'.
document.getElementById('print-letters')?.addEventListener('click', () => window.print());
document.querySelectorAll('[data-print]').forEach((b) => b.addEventListener('click', () => window.print()));
