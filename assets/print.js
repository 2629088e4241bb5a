// The results letters' print button (inline scripts are not allowed by the CSP).
document.getElementById('print-letters')?.addEventListener('click', () => window.print());
