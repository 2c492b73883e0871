// Parse an AsyncAPI document with @asyncapi/parser; print every diagnostic and exit 1 on errors.
// Usage: node validate.mjs FILE
import { readFile } from "node:fs/promises";
import { Parser, fromFile } from "@asyncapi/parser";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs FILE");
  process.exit(2);
}
await readFile(file); // a clear error when the file is missing

// Spectral severities: 0 error, 1 warning, 2 info, 3 hint.
const SEVERITY = ["error", "warning", "info", "hint"];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, file).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const where = (d.path || []).join(".");
  console.log(`${SEVERITY[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${where}`);
}
if (!document || errors.length > 0) {
  console.error(`${file}: ${errors.length} error(s); the document is not valid AsyncAPI`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()}`);
