// The device protocol's names as the server defines them (the Python package wire/,
// served at /v1/wire.json): message types, end reasons and their details, error codes.
// A name the protocol does not have throws at once instead of comparing as undefined.

import WIRE from "/v1/wire.json" with { type: "json" };

/** { NAME: "wire value" } of one table of the document, strict on lookup. */
function names(...tables) {
  const out = {};
  for (const table of tables) for (const [value, { name }] of Object.entries(table)) out[name] = value;
  return new Proxy(Object.freeze(out), {
    get(target, key) {
      if (typeof key === "string" && !Object.hasOwn(target, key)) throw new Error(`not in the protocol: ${key}`);
      return target[key];
    },
  });
}

export const PROTOCOL = WIRE.protocol;
/** Client to server: SEND.CALL_INVITE is "call.invite". */
export const SEND = names(WIRE.client_messages);
/** Server to client: RECEIVE.CALL_ENDED is "call.ended". */
export const RECEIVE = names(WIRE.server_messages);
/** End reasons, and the device's own ("error": the server refused a request). */
export const REASON = names(WIRE.reasons, WIRE.device_reasons);
export const DETAIL = names(WIRE.details);
export const ERROR = names(WIRE.errors);
/** Details beyond the listed ones (e.g. "trunk_503"), by pattern. */
export const DETAIL_PATTERNS = Object.values(WIRE.reasons).flatMap((reason) =>
  Object.keys(reason.patterns).map((pattern) => new RegExp(pattern)),
);
export const TRUNK_STATUS = DETAIL_PATTERNS.find((pattern) => pattern.test("trunk_503"));
