// Renders every dist/<name>.json with its example data and screenshots it with headless
// chromium at desktop and phone widths, into ../test-artifacts/templates/ (git-ignored).
// Run after `npm run build`: npm run preview   (CHROMIUM=/path/to/chromium to override)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import Handlebars from 'handlebars';

const root = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.join(root, '..', 'test-artifacts', 'templates');
const chromium = process.env.CHROMIUM || 'chromium';
const WIDTHS = { desktop: 800, phone: 375 };

const escapeHtml = (value) => {
  if (typeof value === 'string') {
    return value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;').replace(/'/g, '&#x27;');
  }
  if (Array.isArray(value)) return value.map(escapeHtml);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, escapeHtml(item)]));
  }
  return value;
};

function screenshot(htmlFile, pngFile, width) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'panel-preview-'));
  try {
    execFileSync(chromium, [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--hide-scrollbars',
      `--user-data-dir=${profile}`, `--window-size=${width},1000`, `--screenshot=${pngFile}`,
      `file://${htmlFile}`,
    ], { stdio: 'ignore', timeout: 60000 });
  } finally {
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

fs.mkdirSync(outDir, { recursive: true });
for (const file of fs.readdirSync(path.join(root, 'dist')).filter((name) => name.endsWith('.json')).sort()) {
  const template = JSON.parse(fs.readFileSync(path.join(root, 'dist', file), 'utf8'));
  const data = { ...template.example_data, html: escapeHtml(template.example_data) };
  const htmlFile = path.join(outDir, `${template.name}.html`);
  fs.writeFileSync(htmlFile, Handlebars.compile(template.html, { noEscape: true })(data));
  for (const [label, width] of Object.entries(WIDTHS)) {
    const pngFile = path.join(outDir, `${template.name}-${label}.png`);
    screenshot(htmlFile, pngFile, width);
    console.log(`${pngFile}`);
  }
}
