// Invite links: `https://piqchat.net/#?exchange-url=<accept URL>&exchange-key=<key>`.
// A sign-up invite's accept URL names the placeholder host
// `input_inbox_server_host`; the app puts the user's own server there,
// scheme included (a plain-http development server needs `http:`).

/** The host in a sign-up invite that stands for "the user's server". */
export const HOST_PLACEHOLDER = "input_inbox_server_host";

export interface InviteLink {
  /** The accept URL as the link gives it (maybe with the placeholder host). */
  exchangeUrl: string;
  /** The app's key for the exchange's cards; empty for a sign-up invite. */
  exchangeKey: string;
  /** The exchange token (a UUID). */
  token: string;
  /** Whether the accept URL names the placeholder host (a sign-up invite). */
  needsServer: boolean;
}

/** Parses an invite link; throws an error naming what is wrong. */
export function parseInviteLink(link: string): InviteLink {
  let url: URL;
  try {
    url = new URL(link.trim());
  } catch {
    throw new Error("the invite link is not a URL");
  }
  const params = new URLSearchParams(url.hash.replace(/^#\??/, ""));
  const exchangeUrl = params.get("exchange-url");
  if (!exchangeUrl) throw new Error("the invite link has no exchange-url");
  const exchangeKey = params.get("exchange-key");
  if (exchangeKey === null) throw new Error("the invite link has no exchange-key");
  let accept: URL;
  try {
    accept = new URL(exchangeUrl);
  } catch {
    throw new Error("the invite link's exchange-url is not a URL");
  }
  const token = tokenOf(accept);
  return { exchangeUrl, exchangeKey, token, needsServer: accept.hostname === HOST_PLACEHOLDER };
}

function tokenOf(accept: URL): string {
  const m = /\/v1\/exchanges\/([^/]+):accept$/.exec(accept.pathname);
  if (!m || !m[1]) throw new Error(`the exchange-url is not an accept URL (…/v1/exchanges/<token>:accept): ${accept.href}`);
  return decodeURIComponent(m[1]);
}

/**
 * The accept URL with the user's server in place of the placeholder:
 * `server` is its base URL (`https://inbox.example.org`,
 * `http://127.0.0.1:8080`, or with a path prefix behind a proxy). Scheme,
 * host, port and prefix all come from `server`. An accept URL on a real
 * host (a contact exchange on a friend's server) is returned unchanged.
 */
export function resolveAcceptUrl(invite: InviteLink | string, server: string): string {
  const inv = typeof invite === "string" ? parseInviteLink(invite) : invite;
  if (!inv.needsServer) return inv.exchangeUrl;
  return `${serverBase(server)}/v1/exchanges/${encodeURIComponent(inv.token)}:accept`;
}

/**
 * The server base URL an accept URL belongs to: everything before
 * `/v1/exchanges/`. That is where AcceptExchange is called.
 */
export function serverOfAcceptUrl(acceptUrl: string): string {
  const u = new URL(acceptUrl);
  tokenOf(u);
  if (u.hostname === HOST_PLACEHOLDER) throw new Error("the accept URL still names the placeholder host: resolve it first");
  return `${u.origin}${u.pathname.replace(/\/v1\/exchanges\/[^/]+:accept$/, "")}`;
}

/** `https://inbox.example.org/` → `https://inbox.example.org`; a bare host gets https. */
export function serverBase(server: string): string {
  const s = server.trim();
  const u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(s) ? s : `https://${s}`);
  if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error(`the server URL must be http or https: ${server}`);
  if (u.search || u.hash) throw new Error(`the server URL must have no query or fragment: ${server}`);
  return `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
}
