// Shared by the tests: hex, a loopback HTTP server that records requests,
// and signature checking with WebCrypto (independent of the signer's code
// paths beyond the base it reports).
import http from "node:http";

export const hex = (s) => Uint8Array.from(s.match(/../g), (h) => parseInt(h, 16));

/**
 * A server on 127.0.0.1:0; `handler(req, body, res)` answers. Resolves to
 * { url, requests, close }; each request is { method, url, headers, body }.
 */
export async function recordingServer(handler) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = new Uint8Array(Buffer.concat(chunks));
      const r = { method: req.method, url: req.url, headers: req.headers, body };
      requests.push(r);
      handler(r, res);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** A gRPC-web frame: flag byte, 4-byte big-endian length, payload. */
export function frame(flag, payload) {
  const out = new Uint8Array(5 + payload.length);
  out[0] = flag;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
}

/** Answers a gRPC-web call with one message (bytes) and an OK trailer. */
export function grpcWebOk(res, messageBytes) {
  res.writeHead(200, { "content-type": "application/grpc-web+proto" });
  res.write(frame(0, messageBytes));
  res.end(frame(0x80, new TextEncoder().encode("grpc-status: 0\r\n")));
}

/** A trailers-only gRPC-web error, as tonic answers refusals. */
export function grpcWebError(res, code, message, extraHeaders = {}) {
  res.writeHead(200, {
    "content-type": "application/grpc-web+proto",
    "grpc-status": String(code),
    "grpc-message": encodeURIComponent(message),
    ...extraHeaders,
  });
  res.end();
}
