// An OUTCOME reward service: 1 when the last number in the response equals the reference,
// else 0; without a reference, the share of digits in the response.
//   node outcome.js --port 50061
'use strict';

const { serve, portFromArgs } = require('./contract');

function lastNumber(text) {
  const numbers = text.match(/-?\d+(?:\.\d+)?/g);
  return numbers ? Number(numbers[numbers.length - 1]) : null;
}

function score(sample) {
  if (sample.reference !== undefined && sample.reference !== null && sample.reference !== '') {
    return lastNumber(sample.response) === Number(sample.reference) ? 1.0 : 0.0;
  }
  const digits = (sample.response.match(/\d/g) || []).length;
  return sample.response.length ? digits / sample.response.length : 0.0;
}

serve({ kind: 'outcome', modelName: 'node-last-number-check', score, port: portFromArgs() });
