// Builds every template directory (subject.txt, body.inky.html, body.txt, example.json) into
// dist/<name>.json: the SES-ready Subject, Html (Inky -> tables, CSS inlined by juice) and Text,
// the example data, and what the parts read (variables.mjs): `variables` per part and
// `link_variables`, the names the HTML puts in a link attribute. Output is deterministic, so an unchanged source gives the same file
// (and the same content hash in Python). Run: npm ci && npm run build
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sass from 'sass';
import inkyModule from 'inky';
import juice from 'juice';
import Handlebars from 'handlebars';
import { templateVariables } from './variables.mjs';

const root = path.dirname(fileURLToPath(import.meta.url));
const distDir = path.join(root, 'dist');
const SES_TEMPLATE_MAX_BYTES = 500 * 1024;
const INKY_TAGS = ['container', 'row', 'columns', 'button', 'callout', 'spacer', 'wrapper', 'menu', 'center', 'preheader', 'footer'];

function templateNames() {
  return fs.readdirSync(root, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && fs.existsSync(path.join(root, entry.name, 'body.inky.html')))
    .map((entry) => entry.name)
    .sort();
}

function compileCss() {
  return sass.compile(path.join(root, 'scss', 'panel.scss'), {
    loadPaths: [path.join(root, 'node_modules', 'foundation-emails', 'scss')],
    style: 'compressed',
    silenceDeprecations: ['import', 'global-builtin', 'color-functions', 'slash-div'],
  }).css;
}

// <preheader> and <footer> in a body are moved to their slots in the shared layout.
function takeBlock(source, tag) {
  const match = source.match(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`));
  return match ? [match[1].trim(), source.replace(match[0], '')] : ['', source];
}

function buildHtml(name, layout, css) {
  const source = fs.readFileSync(path.join(root, name, 'body.inky.html'), 'utf8');
  const [preheader, withoutPreheader] = takeBlock(source, 'preheader');
  const [footer, body] = takeBlock(withoutPreheader, 'footer');
  const page = layout
    .replace('%PREHEADER%', preheader)
    .replace('%BODY%', body)
    .replace('%FOOTER%', footer);
  const tables = new inkyModule.Inky({}).releaseTheKraken(page);
  const withCss = tables.replace('/* STYLES */', css);
  return juice(withCss, {
    preserveMediaQueries: true,
    removeStyleTags: true,
    applyWidthAttributes: true,
    preserveImportant: true,
  });
}

function htmlEscapedCopy(value) {
  if (typeof value === 'string') {
    return value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;').replace(/'/g, '&#x27;');
  }
  if (Array.isArray(value)) return value.map(htmlEscapedCopy);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, htmlEscapedCopy(item)]));
  }
  return value;
}

// The same checks SES would fail silently on: every variable present in the example data.
// `variables` is what each part reads (templateVariables of it).
function smokeTest(name, parts, variables, example) {
  const data = { ...example, html: htmlEscapedCopy(example) };
  for (const source of Object.values(parts)) {
    Handlebars.compile(source, { strict: true, noEscape: true })(data);
  }
  const leftover = INKY_TAGS.find((tag) => new RegExp(`<${tag}[\\s>]`).test(parts.html) && tag !== 'center');
  if (leftover) throw new Error(`${name}: Inky tag <${leftover}> was not converted`);
  if (!variables.html.every((path) => path.startsWith('html.'))) {
    throw new Error(`${name}: the HTML part must only use {{html.*}} (escaped) values`);
  }
  if ([...variables.subject, ...variables.text].some((path) => path.startsWith('html.'))) {
    throw new Error(`${name}: subject and text must use raw values, not {{html.*}}`);
  }
  const size = Buffer.byteLength(parts.html + parts.text, 'utf8');
  if (size > SES_TEMPLATE_MAX_BYTES) throw new Error(`${name}: ${size} bytes is over the SES template limit`);
}

function build() {
  const css = compileCss();
  const layout = fs.readFileSync(path.join(root, 'layout.inky.html'), 'utf8');
  fs.mkdirSync(distDir, { recursive: true });
  for (const name of templateNames()) {
    const read = (file) => fs.readFileSync(path.join(root, name, file), 'utf8');
    const parts = {
      subject: read('subject.txt').trim(),
      html: buildHtml(name, layout, css),
      text: read('body.txt'),
    };
    const example = JSON.parse(read('example.json'));
    const readBy = Object.fromEntries(Object.entries(parts).map(([part, source]) => [part, templateVariables(source)]));
    const variables = Object.fromEntries(Object.entries(readBy).map(([part, found]) => [part, found.variables]));
    smokeTest(name, parts, variables, example);
    const output = {
      name,
      subject: parts.subject,
      html: parts.html,
      text: parts.text,
      example_data: example,
      variables,
      link_variables: readBy.html.linkVariables,
    };
    fs.writeFileSync(path.join(distDir, `${name}.json`), `${JSON.stringify(output, null, 2)}\n`);
    console.log(`built dist/${name}.json (${Buffer.byteLength(parts.html, 'utf8')} bytes of HTML)`);
  }
}

build();
