// Errors as one typed value, whichever way a call failed: a gRPC-web call
// (ConnectError), a JSON gateway call (google.rpc.Status as JSON), or a
// pre-send limit check. Helpers name the cases an app handles.

import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** A refused or failed call: the gRPC code and the server's message. */
export class InboxError extends Error {
  override readonly name: string = "InboxError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The message as the server wrote it (no code prefix). */
  readonly rawMessage: string;
  /** From a `google.rpc.RetryInfo` detail or `Retry-After`: wait this long before retrying. */
  readonly retryDelayMs: number | undefined;

  constructor(code: Code, rawMessage: string, opts: { retryDelayMs?: number; cause?: unknown } = {}) {
    super(`${codeName(code)}: ${rawMessage}`, { cause: opts.cause });
    this.code = code;
    this.rawMessage = rawMessage;
    this.retryDelayMs = opts.retryDelayMs;
  }

  /** The code in gRPC's spelling, e.g. `PERMISSION_DENIED`. */
  get codeName(): string {
    return codeName(this.code);
  }
}

/** A request that breaks one of the server's published limits, caught before sending. */
export class LimitError extends InboxError {
  override readonly name = "LimitError";
  /** The `GetInfo` limit, e.g. `max_attachment_bytes`. */
  readonly limit: string;
  readonly actual: number;
  readonly max: number;

  constructor(limit: string, what: string, actual: number, max: number) {
    super(
      Code.InvalidArgument,
      `${what} is ${actual}; this server accepts at most ${max} (GetInfo limits.${limit})`,
    );
    this.limit = limit;
    this.actual = actual;
    this.max = max;
  }
}

/** `PermissionDenied` → `PERMISSION_DENIED`. */
export function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Any thrown value as an InboxError (ConnectError details decoded). */
export function toInboxError(e: unknown): InboxError {
  if (e instanceof InboxError) return e;
  const err = ConnectError.from(e);
  const retry = err.findDetails(RetryInfoSchema)[0]?.retryDelay;
  const retryDelayMs = retry ? Number(retry.seconds) * 1000 + Math.round(retry.nanos / 1e6) : undefined;
  return new InboxError(err.code, err.rawMessage, { retryDelayMs, cause: e });
}

/**
 * A JSON gateway answer that is not 2xx as an InboxError: its body is a
 * `google.rpc.Status` in JSON, the retry hint a RetryInfo detail or
 * `Retry-After` (seconds).
 */
export async function errorFromResponse(res: Response): Promise<InboxError> {
  const text = await res.text();
  let code = httpCode(res.status);
  let message = text.trim() || `HTTP ${res.status}`;
  let retryDelayMs: number | undefined;
  try {
    const status = JSON.parse(text) as { code?: unknown; message?: unknown; details?: unknown };
    if (typeof status.code === "number" && Code[status.code] !== undefined) code = status.code as Code;
    if (typeof status.message === "string") message = status.message;
    for (const d of Array.isArray(status.details) ? status.details : []) {
      const delay = (d as Record<string, unknown>)?.["retryDelay"];
      if (typeof delay === "string" && /^\d+(\.\d+)?s$/.test(delay)) {
        retryDelayMs = Math.round(parseFloat(delay) * 1000);
      }
    }
  } catch {
    // Not JSON (e.g. a proxy's page): keep the HTTP status and the text.
  }
  const after = res.headers.get("retry-after");
  if (retryDelayMs === undefined && after && /^\d+$/.test(after)) retryDelayMs = Number(after) * 1000;
  return new InboxError(code, message, { retryDelayMs });
}

/** The gRPC code of an HTTP status without a Status body (grpc-gateway's mapping, reversed). */
function httpCode(status: number): Code {
  switch (status) {
    case 400:
      return Code.InvalidArgument;
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.PermissionDenied;
    case 404:
      return Code.NotFound;
    case 409:
      return Code.Aborted;
    case 413:
    case 429:
      return Code.ResourceExhausted;
    case 501:
      return Code.Unimplemented;
    case 503:
      return Code.Unavailable;
    case 504:
      return Code.DeadlineExceeded;
    default:
      return Code.Unknown;
  }
}

/**
 * The key is not registered here: PERMISSION_DENIED on an account call
 * (GetAccount, ListParcels, SetContacts, backups, CreateExchange). Sign up
 * through an invite first. (A SendParcel that no recipient accepts is
 * PERMISSION_DENIED too, with its own message.)
 */
export function isNotRegistered(e: unknown): boolean {
  return toInboxError(e).code === Code.PermissionDenied;
}

/** The server had seen this signature's nonce: never retry with the same signature. */
export function isReplayed(e: unknown): boolean {
  const err = toInboxError(e);
  return err.code === Code.Unauthenticated && /replayed|nonce was already used/.test(err.rawMessage);
}

/** The signature's `created` is outside the server's window: the device clock is off. */
export function isClockSkew(e: unknown): boolean {
  const err = toInboxError(e);
  return err.code === Code.Unauthenticated && /signature is too old|signature is from the future/.test(err.rawMessage);
}

/** The signature was made for another server's key (a stale cached `tag`). */
export function isWrongServer(e: unknown): boolean {
  const err = toInboxError(e);
  return err.code === Code.Unauthenticated && /tag must be this server/.test(err.rawMessage);
}

/** Rate limited: RESOURCE_EXHAUSTED with a retry hint; wait `retryDelayMs(e)`. */
export function isRateLimited(e: unknown): boolean {
  const err = toInboxError(e);
  return err.code === Code.ResourceExhausted && err.retryDelayMs !== undefined;
}

/** How long to wait before retrying, when the server said; else undefined. */
export function retryDelayMs(e: unknown): number | undefined {
  return toInboxError(e).retryDelayMs;
}

/**
 * Over a limit that waiting does not lift soon: a LimitError from the
 * pre-send check, OUT_OF_RANGE, or RESOURCE_EXHAUSTED without a retry hint
 * (a recipient's full inbox, the server's disk, a body over the size limit).
 */
export function isOverLimit(e: unknown): boolean {
  const err = toInboxError(e);
  if (err instanceof LimitError || err.code === Code.OutOfRange) return true;
  return err.code === Code.ResourceExhausted && err.retryDelayMs === undefined;
}
