// The web workbench in a real browser (Debian's Chromium driven by
// playwright-core), one phase per run so the e2e test (tests/tests/e2e/
// workbench.rs) checks the API between them:
//
//   request  a subscriber finds the dataset in 数据目录, requests it in 申请
//            (every field ticked; the masked one says so), and is refused a
//            not-shared dataset with the API's reason; markup in the
//            owner's description stays text; a link with another
//            principal's token does not swap the open session;
//   approve  the owner sees the request in 审批 (purpose, fields, node), is
//            refused a rejection without a reason, then approves with one
//            field unticked; an owner of another department sees nothing;
//   revoke   the owner revokes with a reason; the subscriber's list shows
//            it with that reason; the other owner still sees nothing.
//
// Every page is saved as a screenshot in both languages. Prints one JSON
// line with what the page showed; exits 1 with the reason on a failure.
//
// Environment: BACKFLOW_URL, BACKFLOW_DATASET, BACKFLOW_NOT_SHARED,
// BACKFLOW_SUBSCRIBER_TOKEN, BACKFLOW_OWNER_TOKEN, BACKFLOW_OTHER_OWNER_TOKEN,
// BACKFLOW_SHOTS (a directory), BACKFLOW_CHROMIUM (default /usr/bin/chromium),
// BACKFLOW_UNTICK (the field the owner leaves out), BACKFLOW_REVOKE_REASON.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const phase = process.argv[2];
const env = (name) => {
  const v = process.env[name];
  if (!v) { throw new Error(`${name} is not set`); }
  return v;
};
const url = env("BACKFLOW_URL");
const dataset = env("BACKFLOW_DATASET");
const shots = env("BACKFLOW_SHOTS");
mkdirSync(shots, { recursive: true });
const TIMEOUT = 20000;

function check(ok, what) {
  if (!ok) { throw new Error(what); }
}

/// A signed-in page of one principal; the browser's own zone is not
/// Shanghai, so the page must convert.
async function signIn(browser, token, role) {
  const context = await browser.newContext({
    viewport: { width: 1400, height: 1000 },
    timezoneId: "America/New_York",
    locale: "en-US",
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // A refused call is logged by the browser itself; the page shows those.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) { errors.push(m.text()); }
  });
  await page.goto(`${url}/#token=${encodeURIComponent(token)}`);
  await page.waitForSelector(`#whoami[data-role="${role}"]`, { timeout: TIMEOUT });
  return { context, page, errors };
}

async function visibleTabs(page) {
  return page.$$eval("#tabs button[data-tab]", (bs) => bs.filter((b) => !b.hidden).map((b) => b.getAttribute("data-tab")));
}

/// Opens a tab and waits until the page has read the API for it.
async function openTab(page, tab) {
  await page.evaluate((t) => document.getElementById(t).removeAttribute("data-loaded-ms"), tab);
  await page.click(`#tabs button[data-tab="${tab}"]`);
  await page.waitForSelector(`#${tab}[data-loaded-ms]:not([hidden])`, { timeout: TIMEOUT });
}

async function setLang(page, lang) {
  if ((await page.getAttribute("html", "lang")) !== lang) {
    await page.click("#lang-switch");
  }
  await page.waitForFunction((l) => document.documentElement.lang === l, lang, { timeout: TIMEOUT });
}

/// A screenshot of the open tab in Chinese and in English (left in Chinese).
async function shootBoth(page, name, tab) {
  for (const lang of ["zh-CN", "en"]) {
    await setLang(page, lang);
    if (tab) { await page.waitForSelector(`#${tab}[data-loaded-ms]:not([hidden])`, { timeout: TIMEOUT }); }
    await page.screenshot({ path: join(shots, `${name}.${lang}.png`), fullPage: true });
  }
  await setLang(page, "zh-CN");
  if (tab) { await page.waitForSelector(`#${tab}[data-loaded-ms]:not([hidden])`, { timeout: TIMEOUT }); }
}

async function outcome(page, box) {
  await page.waitForSelector(`#${box}[data-outcome]:not([hidden])`, { timeout: TIMEOUT });
  return page.$eval(`#${box}`, (e) => ({
    outcome: e.getAttribute("data-outcome"),
    action: e.getAttribute("data-action"),
    id: e.getAttribute("data-id"),
    status: e.getAttribute("data-error-status"),
    reason: e.getAttribute("data-reason"),
    text: e.textContent,
  }));
}

/// Rows of one kind with their data attributes and cells.
async function rows(page, kind) {
  return page.$$eval(`tr[data-kind="${kind}"]`, (trs) => trs.map((tr) => {
    const cells = {};
    tr.querySelectorAll("[data-field]").forEach((c) => { cells[c.getAttribute("data-field")] = c.getAttribute("data-value"); });
    return {
      id: tr.getAttribute("data-id"),
      dataset: tr.getAttribute("data-dataset"),
      subscriber: tr.getAttribute("data-subscriber"),
      state: tr.getAttribute("data-state"),
      hidden: tr.hidden,
      cells,
      text: tr.textContent,
    };
  }));
}

async function nothingOfOthers(browser, result) {
  const other = await signIn(browser, env("BACKFLOW_OTHER_OWNER_TOKEN"), "owner");
  await openTab(other.page, "decide");
  result.other_owner = {
    principal: await other.page.getAttribute("#whoami", "data-principal"),
    decisions: (await rows(other.page, "decision")).length,
    granted: (await rows(other.page, "granted")).length,
    decided: (await rows(other.page, "decided")).length,
  };
  await shootBoth(other.page, `${phase}-other-owner-decide`, "decide");
  check(other.errors.length === 0, `page errors (other owner): ${other.errors.join("; ")}`);
  await other.context.close();
}

async function requestPhase(browser, result) {
  const { context, page, errors } = await signIn(browser, env("BACKFLOW_SUBSCRIBER_TOKEN"), "subscriber");
  result.lang_default = await page.getAttribute("html", "lang");
  result.principal = await page.getAttribute("#whoami", "data-principal");
  result.whoami_text = await page.textContent("#whoami");
  result.tabs = await visibleTabs(page);

  // 数据目录: the dataset, its fields and rules; the search box filters.
  await openTab(page, "catalog");
  result.catalog_tab_label = await page.textContent('#tabs button[data-tab="catalog"]');
  const entry = await page.$eval(`tr[data-kind="catalog-dataset"][data-dataset="${dataset}"]`, (tr) => ({
    owner: tr.getAttribute("data-owner"),
    sharing: tr.getAttribute("data-sharing"),
    region: tr.getAttribute("data-region-column"),
    subscribers: tr.getAttribute("data-subscribers"),
    fields: Object.fromEntries([...tr.querySelectorAll('[data-kind="catalog-field"]')].map((li) => [li.getAttribute("data-field-name"), li.getAttribute("data-rule")])),
    text: tr.textContent,
    // Markup an owner wrote in the description is text, never elements.
    markup_elements: tr.querySelectorAll("img, script, b, iframe").length,
  }));
  result.catalog = entry;
  result.markup_ran = await page.evaluate(() => window.__xss === undefined ? null : String(window.__xss));
  await page.fill("#catalog-search", "no-such-dataset-anywhere");
  const hiddenAll = (await rows(page, "catalog-dataset")).every((r) => r.hidden);
  await page.fill("#catalog-search", dataset.split(".")[1]);
  const shown = (await rows(page, "catalog-dataset")).filter((r) => !r.hidden).map((r) => r.dataset);
  result.search = { hides_all_for_nonsense: hiddenAll, shown };
  await page.fill("#catalog-search", "");
  await shootBoth(page, "request-subscriber-catalog", "catalog");

  // 申请: a not-shared dataset is refused with the owner's reason.
  await openTab(page, "request");
  await page.selectOption("#request-dataset", env("BACKFLOW_NOT_SHARED"));
  await page.fill("#request-purpose", "户籍核验");
  await page.click("#request-submit");
  result.refused = await outcome(page, "request-status");

  // ... and the conditional dataset, every field ticked, is requested.
  await page.selectOption("#request-dataset", dataset);
  result.request_fields = await page.$$eval('[data-kind="request-field"]', (ls) => ls.map((l) => ({
    field: l.getAttribute("data-field-name"),
    rule: l.getAttribute("data-rule"),
    checked: l.querySelector("input").checked,
    text: l.textContent,
  })));
  await page.fill("#request-purpose", "居民服务：社区网格化管理");
  await page.fill("#request-days", "30");
  await page.click("#request-submit");
  await page.waitForSelector('#request-status[data-outcome="ok"]', { timeout: TIMEOUT });
  result.submitted = await outcome(page, "request-status");
  await page.waitForSelector(`#request[data-loaded-ms] tr[data-kind="my-request"][data-dataset="${dataset}"]`, { timeout: TIMEOUT });
  result.mine = await rows(page, "my-request");
  await shootBoth(page, "request-subscriber-request", "request");

  // A link carrying another principal's token does not swap the open
  // session: the page keeps the subscriber and says why.
  await page.evaluate((tok) => { location.hash = "token=" + encodeURIComponent(tok); }, env("BACKFLOW_OWNER_TOKEN"));
  await page.waitForSelector('#notice[data-notice="notice.link_token"]:not([hidden])', { timeout: TIMEOUT });
  await openTab(page, "request");
  result.link_token = {
    role: await page.getAttribute("#whoami", "data-role"),
    principal: await page.getAttribute("#whoami", "data-principal"),
    tabs: await visibleTabs(page),
    notice: await page.textContent("#notice"),
    hash: await page.evaluate(() => location.hash),
    stored: await page.evaluate(() => sessionStorage.getItem("backflow.token")),
  };
  await page.screenshot({ path: join(shots, "request-link-token-refused.zh-CN.png"), fullPage: true });

  // The language switch is remembered across a reload.
  await setLang(page, "en");
  await page.reload();
  await page.waitForSelector('#whoami[data-role="subscriber"]', { timeout: TIMEOUT });
  result.lang_after_reload = await page.getAttribute("html", "lang");
  result.request_tab_label_en = await page.textContent('#tabs button[data-tab="request"]');
  await setLang(page, "zh-CN");
  check(errors.length === 0, `page errors (subscriber): ${errors.join("; ")}`);
  await context.close();
}

async function approvePhase(browser, result) {
  const { context, page, errors } = await signIn(browser, env("BACKFLOW_OWNER_TOKEN"), "owner");
  result.principal = await page.getAttribute("#whoami", "data-principal");
  result.tabs = await visibleTabs(page);
  // The overview is the owner's first tab and still shows the pending request.
  await page.waitForSelector(`#overview:not([hidden]) tr[data-kind="pending"][data-dataset="${dataset}"]`, { timeout: TIMEOUT });
  await page.screenshot({ path: join(shots, "approve-owner-overview.zh-CN.png"), fullPage: true });
  await openTab(page, "catalog");
  await shootBoth(page, "approve-owner-catalog", "catalog");
  await openTab(page, "decide");
  const id = `${env("BACKFLOW_SUBSCRIBER")}:${dataset}`;
  const row = `tr[data-kind="decision"][data-id="${id}"]`;
  await page.waitForSelector(row, { timeout: TIMEOUT });
  result.pending = (await rows(page, "decision")).filter((r) => r.id === id)[0];
  await shootBoth(page, "approve-owner-decide", "decide");

  // A rejection without a reason is refused, with the API's reason.
  await page.click(`${row} button[data-action="reject"]`);
  const refused = await outcome(page, "decide-status");
  await page.waitForSelector(`#decide[data-loaded-ms] ${row}`, { timeout: TIMEOUT });
  result.reject_without_reason = refused;

  // Approved with one field unticked.
  const untick = env("BACKFLOW_UNTICK");
  await page.uncheck(`${row} input[data-grant="${untick}"]`);
  await page.click(`${row} button[data-action="approve"]`);
  await page.waitForSelector('#decide-status[data-outcome="ok"][data-action="approve"]', { timeout: TIMEOUT });
  result.approved = await outcome(page, "decide-status");
  await page.waitForSelector(`#decide[data-loaded-ms] tr[data-kind="granted"][data-id="${id}"]`, { timeout: TIMEOUT });
  result.granted = (await rows(page, "granted")).filter((r) => r.id === id)[0];
  await shootBoth(page, "approve-owner-granted", "decide");
  // The owner's catalog counts the new subscriber.
  await openTab(page, "catalog");
  result.owner_catalog_subscribers = await page.getAttribute(
    `tr[data-kind="catalog-dataset"][data-dataset="${dataset}"]`, "data-subscribers");
  check(errors.length === 0, `page errors (owner): ${errors.join("; ")}`);
  await context.close();
  await nothingOfOthers(browser, result);
}

async function revokePhase(browser, result) {
  const id = `${env("BACKFLOW_SUBSCRIBER")}:${dataset}`;
  const reason = env("BACKFLOW_REVOKE_REASON");
  const owner = await signIn(browser, env("BACKFLOW_OWNER_TOKEN"), "owner");
  await openTab(owner.page, "decide");
  const row = `tr[data-kind="granted"][data-id="${id}"]`;
  await owner.page.waitForSelector(row, { timeout: TIMEOUT });
  await owner.page.fill(`${row} input[data-reason]`, reason);
  await owner.page.click(`${row} button[data-action="revoke"]`);
  await owner.page.waitForSelector('#decide-status[data-outcome="ok"][data-action="revoke"]', { timeout: TIMEOUT });
  result.revoked = await outcome(owner.page, "decide-status");
  await owner.page.waitForSelector(`#decide[data-loaded-ms] tr[data-kind="decided"][data-id="${id}"]`, { timeout: TIMEOUT });
  result.history = (await rows(owner.page, "decided")).filter((r) => r.id === id)[0];
  await shootBoth(owner.page, "revoke-owner-decide", "decide");
  check(owner.errors.length === 0, `page errors (owner): ${owner.errors.join("; ")}`);
  await owner.context.close();

  const sub = await signIn(browser, env("BACKFLOW_SUBSCRIBER_TOKEN"), "subscriber");
  await openTab(sub.page, "request");
  await sub.page.waitForSelector(`tr[data-kind="my-request"][data-id="${id}"][data-state="revoked"]`, { timeout: TIMEOUT });
  result.mine = (await rows(sub.page, "my-request")).filter((r) => r.id === id)[0];
  await shootBoth(sub.page, "revoke-subscriber-request", "request");
  check(sub.errors.length === 0, `page errors (subscriber): ${sub.errors.join("; ")}`);
  // Signing out leaves nothing of the subscriber on the page.
  await Promise.all([sub.page.waitForEvent("load", { timeout: TIMEOUT }), sub.page.click("#logout")]);
  await sub.page.waitForSelector("#login:not([hidden])", { timeout: TIMEOUT });
  result.after_sign_out = {
    rows: (await sub.page.$$("tr[data-kind]")).length,
    token_kept: await sub.page.evaluate(() => Object.keys(sessionStorage).length > 0),
  };
  await sub.context.close();
  await nothingOfOthers(browser, result);
}

const phases = { request: requestPhase, approve: approvePhase, revoke: revokePhase };
if (!phases[phase]) {
  console.error(`usage: node workbench.mjs request|approve|revoke (not ${phase})`);
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.BACKFLOW_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const result = { phase };
try {
  await phases[phase](browser, result);
  console.log(JSON.stringify(result));
} catch (e) {
  console.error(`${phase}: ${e && e.stack ? e.stack : e}`);
  console.error(JSON.stringify(result));
  process.exitCode = 1;
} finally {
  await browser.close();
}
