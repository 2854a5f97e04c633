// Invite links: parsing, the placeholder host replaced by the user's server
// (scheme, port and path prefix included), other servers' links untouched.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseInviteLink, resolveAcceptUrl, serverBase, serverOfAcceptUrl } from "../dist/index.js";

// As the server prints it (src/domain/exchanges.rs's unit test).
const TOKEN = "3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f";
const SIGN_UP = `https://piqchat.net/#?exchange-url=https%3A%2F%2Finput_inbox_server_host%2Fv1%2Fexchanges%2F${TOKEN}%3Aaccept&exchange-key=`;

test("a sign-up invite parses to its token and needs the user's server", () => {
  assert.deepEqual(parseInviteLink(SIGN_UP), {
    exchangeUrl: `https://input_inbox_server_host/v1/exchanges/${TOKEN}:accept`,
    exchangeKey: "",
    token: TOKEN,
    needsServer: true,
  });
});

test("the placeholder becomes the user's server, scheme included", () => {
  const cases = [
    ["https://inbox.example.org", `https://inbox.example.org/v1/exchanges/${TOKEN}:accept`],
    ["inbox.example.org", `https://inbox.example.org/v1/exchanges/${TOKEN}:accept`],
    ["https://Inbox.Example.org:443/", `https://inbox.example.org/v1/exchanges/${TOKEN}:accept`],
    ["http://127.0.0.1:8080", `http://127.0.0.1:8080/v1/exchanges/${TOKEN}:accept`],
    ["http://[::1]:8080/", `http://[::1]:8080/v1/exchanges/${TOKEN}:accept`],
    ["https://example.org/inbox/", `https://example.org/inbox/v1/exchanges/${TOKEN}:accept`],
  ];
  for (const [server, want] of cases) {
    const url = resolveAcceptUrl(SIGN_UP, server);
    assert.equal(url, want, server);
    assert.equal(serverOfAcceptUrl(url), serverBase(server), server);
  }
});

test("a contact exchange on a friend's server is accepted there, unchanged", () => {
  const accept = `https://friend.example.net/v1/exchanges/${TOKEN}:accept`;
  const link = `https://piqchat.net/#?exchange-url=${encodeURIComponent(accept)}&exchange-key=k3y_abc`;
  const inv = parseInviteLink(link);
  assert.equal(inv.needsServer, false);
  assert.equal(inv.exchangeKey, "k3y_abc");
  assert.equal(resolveAcceptUrl(inv, "http://127.0.0.1:8080"), accept);
  assert.equal(serverOfAcceptUrl(accept), "https://friend.example.net");
});

test("broken links say what is wrong", () => {
  assert.throws(() => parseInviteLink("not a link"), /not a URL/);
  assert.throws(() => parseInviteLink("https://piqchat.net/#?exchange-key="), /no exchange-url/);
  assert.throws(
    () => parseInviteLink(`https://piqchat.net/#?exchange-url=${encodeURIComponent("https://h/v1/exchanges/x:accept")}`),
    /no exchange-key/,
  );
  assert.throws(
    () => parseInviteLink(`https://piqchat.net/#?exchange-url=${encodeURIComponent("https://h/v1/parcels")}&exchange-key=`),
    /not an accept URL/,
  );
  assert.throws(() => serverOfAcceptUrl(parseInviteLink(SIGN_UP).exchangeUrl), /placeholder host/);
  assert.throws(() => resolveAcceptUrl(SIGN_UP, "ftp://h"), /http or https/);
});
