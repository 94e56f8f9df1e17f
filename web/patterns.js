// EventBridge-style pattern matching, for the rules editor's tester (API.md "Events").
// A pattern is an object whose leaves are arrays of allowed values or matchers:
// exact values, {prefix}, {suffix}, {"anything-but": value|[values]|{prefix}}, {numeric: [op, n, ...]},
// {exists: bool}. Nested objects match nested fields; an array in the event matches if any item does.

const OPS = {
  "<": (a, b) => a < b,
  "<=": (a, b) => a <= b,
  "=": (a, b) => a === b,
  ">=": (a, b) => a >= b,
  ">": (a, b) => a > b,
};

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function numeric(value, spec) {
  if (typeof value !== "number") return false;
  for (let i = 0; i < spec.length; i += 2) {
    const op = OPS[spec[i]];
    if (!op || !op(value, spec[i + 1])) return false;
  }
  return true;
}

function leaf(value, matcher) {
  if (!isObject(matcher)) return value === matcher;
  if ("prefix" in matcher) return typeof value === "string" && value.startsWith(matcher.prefix);
  if ("suffix" in matcher) return typeof value === "string" && value.endsWith(matcher.suffix);
  if ("numeric" in matcher) return numeric(value, matcher.numeric);
  if ("anything-but" in matcher) {
    const but = matcher["anything-but"];
    if (value === undefined) return false;
    if (Array.isArray(but)) return !but.some((b) => leaf(value, b));
    return !leaf(value, but);
  }
  if ("equals-ignore-case" in matcher) return typeof value === "string" && value.toLowerCase() === String(matcher["equals-ignore-case"]).toLowerCase();
  throw new Error(`unknown matcher ${JSON.stringify(matcher)}`);
}

function matchValue(value, allowed) {
  const options = Array.isArray(allowed) ? allowed : [allowed];
  for (const option of options) {
    if (isObject(option) && "exists" in option) {
      if ((value !== undefined) === Boolean(option.exists)) return true;
      continue;
    }
    if (value === undefined) continue;
    const values = Array.isArray(value) ? value : [value];
    if (values.some((v) => leaf(v, option))) return true;
  }
  return false;
}

/** Whether `event` matches `pattern`. Throws on a malformed pattern. */
export function matches(pattern, event) {
  if (!isObject(pattern)) throw new Error("a pattern is a JSON object");
  for (const [key, expected] of Object.entries(pattern)) {
    const value = isObject(event) ? event[key] : undefined;
    if (isObject(expected)) {
      if (!isObject(value) || !matches(expected, value)) return false;
    } else if (!matchValue(value, expected)) {
      return false;
    }
  }
  return true;
}
