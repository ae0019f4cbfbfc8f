// A PROCESS reward service: each step scores 1 when every "a + b = c" in it is right,
// 0.5 when it has no such equation, 0 when one is wrong.
//   node process.js --port 50062
'use strict';

const { serve, portFromArgs } = require('./contract');

function scoreStep(text) {
  // (?<!\d): a match starts at a number's first digit, which keeps this linear in the
  // step's length (without it a long run of digits backtracks quadratically).
  const equations = [...text.matchAll(/(?<![\d-])(-?\d+)\s*\+\s*(-?\d+)\s*=\s*(-?\d+)/g)];
  if (equations.length === 0) return 0.5;
  return equations.every(([, a, b, c]) => Number(a) + Number(b) === Number(c)) ? 1.0 : 0.0;
}

function score(sample, steps) {
  return steps.map((step) => scoreStep(step.text));
}

serve({ kind: 'process', modelName: 'node-addition-checker', score, separator: '\n\n', port: portFromArgs() });
