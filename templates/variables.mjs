// The data paths a Handlebars source reads, found by walking Handlebars' own parse tree, so the build
// writes exactly what SES will resolve into dist/ and Python never parses Handlebars itself.
//
// A path is written as SES resolves it from the recipient's data: `a.b`; inside `{{#each items}}`,
// `{{name}}` is `items[].name` and `{{this}}` is `items[]`; `{{../x}}` climbs one `#each`/`#with`;
// `{{#with a}}` scopes to `a`; `#if`/`#unless` do not change the scope. Inline partials
// (`{{#*inline "p"}}`) are read where they are called (`{{> p}}`). Literals and `@index`-style data
// variables are not data paths. Any other block helper, or a partial not defined inline, is refused:
// what it reads cannot be known. Link variables are the raw names (without `html.`) a value of which
// the HTML puts inside a link attribute (href, src, ...), which the mailer checks against its policy.
//
// Run alone, `node variables.mjs < source` prints {"variables": [...], "link_variables": [...]}.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import Handlebars from 'handlebars';

const SCOPING_HELPERS = { each: (path) => `${path}[]`, with: (path) => path };
const BLOCK_HELPERS = new Set(['if', 'unless', 'each', 'with']);
const HTML_COPY_PREFIX = 'html.';
// The source up to a variable ends inside an attribute whose value is a link.
const INSIDE_LINK_ATTRIBUTE = /\b(?:href|src|action|formaction|background|poster)\s*=\s*(["']?)[^"'>]*$/i;

export function rawName(path) {
  return path.startsWith(HTML_COPY_PREFIX) ? path.slice(HTML_COPY_PREFIX.length) : path;
}

// Every inline partial of the source by name (wherever it is defined, as Handlebars hoists them).
function inlinePartials(node, found = {}) {
  if (!node || typeof node !== 'object') return found;
  if (node.type === 'DecoratorBlock' && node.path.original === 'inline') {
    found[node.params[0].value] = node.program;
  }
  for (const value of Object.values(node)) {
    if (Array.isArray(value)) value.forEach((item) => inlinePartials(item, found));
    else if (value && typeof value === 'object' && value.type) inlinePartials(value, found);
  }
  return found;
}

class Walk {
  constructor(source) {
    const ast = Handlebars.parse(source);
    this.partials = inlinePartials(ast);
    this.variables = new Set();
    this.linkVariables = new Set();
    this.text = ''; // the content so far, each variable as `x`: tells whether one sits in a link attribute
    this.program(ast, ['']);
  }

  program(program, scopes) {
    for (const node of program ? program.body : []) this.statement(node, scopes);
  }

  statement(node, scopes) {
    switch (node.type) {
      case 'ContentStatement':
        this.text += node.value;
        break;
      case 'MustacheStatement': {
        const inLink = INSIDE_LINK_ATTRIBUTE.test(this.text);
        const paths = node.params.length ? this.expressions(node.params, scopes) : [this.path(node.path, scopes)];
        for (const path of paths.filter(Boolean)) {
          this.variables.add(path);
          if (inLink) this.linkVariables.add(rawName(path));
        }
        this.text += 'x';
        break;
      }
      case 'BlockStatement': {
        const helper = node.path.original;
        if (!BLOCK_HELPERS.has(helper)) throw new Error(`block helper #${helper} is not one SES documents`);
        const [argument] = this.expressions(node.params, scopes);
        if (argument) this.variables.add(argument);
        const scoped = SCOPING_HELPERS[helper] && argument ? [...scopes, SCOPING_HELPERS[helper](argument)] : scopes;
        this.program(node.program, scoped);
        this.program(node.inverse, scopes);
        break;
      }
      case 'PartialStatement': {
        const name = node.name.original;
        if (!(name in this.partials)) throw new Error(`partial {{> ${name}}} is not defined inline in the same part`);
        this.program(this.partials[name], scopes);
        break;
      }
      case 'DecoratorBlock': // an inline partial's definition: read where it is called
      case 'CommentStatement':
        break;
      default:
        throw new Error(`${node.type} is not Handlebars this build can check`);
    }
  }

  // The data paths among helper arguments (a sub-expression's arguments included).
  expressions(params, scopes) {
    return params.flatMap((param) => {
      if (param.type === 'PathExpression') return [this.path(param, scopes)];
      if (param.type === 'SubExpression') return this.expressions(param.params, scopes);
      return []; // a literal
    });
  }

  path(expression, scopes) {
    if (expression.type !== 'PathExpression' || expression.data) return null;
    const base = scopes[Math.max(scopes.length - 1 - expression.depth, 0)];
    const tail = expression.parts.join('.');
    if (!tail) return base || null;
    return base ? `${base}.${tail}` : tail;
  }
}

// {variables, linkVariables}: sorted arrays of what `source` reads.
export function templateVariables(source) {
  const walk = new Walk(source);
  return { variables: [...walk.variables].sort(), linkVariables: [...walk.linkVariables].sort() };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { variables, linkVariables } = templateVariables(fs.readFileSync(0, 'utf8'));
  console.log(JSON.stringify({ variables, link_variables: linkVariables }));
}
