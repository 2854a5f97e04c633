// The smallest app: opened through an invite link, it makes a key, signs up
// on the user's server and lists the inbox. `npm run size` bundles it to
// measure what the package costs an app.
import { createInboxClient, generateIdentity, isNotRegistered } from "../src/index.js";

async function main(): Promise<void> {
  const server = prompt("Your inbox server", "https://inbox.example.org") ?? "";
  const identity = await generateIdentity();
  const inbox = createInboxClient({ baseUrl: server, identity, clientVersion: "minimal/1" });
  await inbox.acceptInvite(location.href);
  try {
    const { parcels } = await inbox.parcels.listParcels({});
    document.body.textContent = `${parcels.length} parcels`;
  } catch (e) {
    document.body.textContent = isNotRegistered(e) ? "not signed up" : String(e);
  }
}

void main();
