"""The single web page of the interactive tool (HTML, CSS and JavaScript, no external files or libraries).

It drives the JSON endpoints of :mod:`lit_pref.vca.server`: ``/api/start``, ``/api/choose``, ``/api/next`` and
``/api/finish``; while a round generates it polls ``/api/progress`` and shows the denoising step, and on load it
asks ``/api/info`` what the model and the refiner understand. A server that does not answer gets a sentence that
says so, not the browser's "Failed to fetch". User text is only ever inserted with ``textContent`` (never as HTML).
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lit_pref - image co-adaptation</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
  header p { color: #555; margin-top: 0; }
  section { border: 1px solid #ddd; border-radius: 8px; padding: 1rem; margin: 1rem 0; }
  label { display: block; font-weight: 600; margin: 0.6rem 0 0.3rem; }
  textarea, input[type=text] { width: 100%; box-sizing: border-box; font: inherit; padding: 0.4rem; }
  textarea { min-height: 3.2rem; }
  button { font: inherit; padding: 0.45rem 1rem; margin: 0.6rem 0.4rem 0 0; border-radius: 6px; border: 1px solid #888;
           background: #f4f4f4; cursor: pointer; }
  button.primary { background: #2563eb; color: white; border-color: #2563eb; }
  button:disabled { opacity: 0.5; cursor: wait; }
  .grid { display: flex; flex-wrap: wrap; gap: 0.8rem; }
  .pick { padding: 0; margin: 0; border: 4px solid transparent; background: none; border-radius: 8px; position: relative; }
  .pick img { width: 192px; height: 192px; image-rendering: pixelated; display: block; border-radius: 4px; }
  .pick span { position: absolute; top: 4px; left: 4px; background: rgba(0,0,0,0.6); color: white; padding: 0 0.4rem;
               border-radius: 4px; font-size: 0.85rem; }
  .pick.selected { border-color: #16a34a; box-shadow: 0 0 0 2px #16a34a; }
  .used { font-style: italic; color: #444; }
  #history li { margin: 0.4rem 0; display: flex; gap: 0.6rem; align-items: center; }
  #history img { width: 48px; height: 48px; image-rendering: pixelated; border-radius: 3px; }
  #status { min-height: 1.4rem; color: #1d4ed8; }
  #status.error { color: #b91c1c; }
  #progress { width: 20rem; vertical-align: middle; margin-left: 0.6rem; }
  #info ul { margin: 0.3rem 0; }
  #info code { background: #f4f4f4; padding: 0 0.2rem; }
</style>
</head>
<body>
<header>
  <h1>Image co-adaptation</h1>
  <p>Describe an image, pick the best of the results and say what to change. Each round the prompt is refined from
     your feedback. <b>Finish and save</b> stores the whole session as one training dialogue.</p>
</header>

<details id="info" hidden>
  <summary>What this model understands</summary>
  <div id="vocabulary"></div>
  <div id="feedback-help"></div>
</details>

<section id="start">
  <label for="prompt">What should the image show?</label>
  <textarea id="prompt" placeholder="a small red circle on a white background"></textarea>
  <button id="generate" class="primary">Generate</button>
</section>

<section id="round" hidden>
  <h2 id="round-title">Round 1</h2>
  <p>Prompt: <span id="used-prompt" class="used"></span></p>
  <p>Click the image closest to what you want.</p>
  <div id="images" class="grid"></div>
  <label for="feedback">What should change in the chosen image?</label>
  <input type="text" id="feedback" placeholder="make it green">
  <label for="satisfaction">How satisfied are you with it? (optional)</label>
  <select id="satisfaction">
    <option value="">-</option><option value="1">1 (not at all)</option><option value="2">2</option>
    <option value="3">3</option><option value="4">4</option><option value="5">5 (completely)</option>
  </select>
  <div>
    <button id="send" class="primary">Send feedback</button>
    <button id="finish-round">Finish and save</button>
  </div>
</section>

<section id="next" hidden>
  <label for="next-prompt">Next prompt (refined from your feedback; edit it if you like)</label>
  <textarea id="next-prompt"></textarea>
  <button id="next-round" class="primary">Generate next round</button>
  <button id="finish-next">Finish and save</button>
</section>

<section id="history" hidden>
  <h2>Earlier rounds</h2>
  <ol id="rounds"></ol>
</section>

<p><span id="status" role="status"></span><progress id="progress" max="1" value="0" hidden></progress></p>

<script>
"use strict";
let session = null, chosen = null, images = [], adapting = false;
const $ = (id) => document.getElementById(id);

function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function busy(on) { document.querySelectorAll("button").forEach((b) => { b.disabled = on; }); }

const DOWN = "The lit_pref interact server does not answer: was it stopped? Start it again " +
             "(python -m lit_pref interact) and reload this page.";

async function api(path, body) {
  busy(true);
  try {
    let r;
    try {
      r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                              body: JSON.stringify(body) });
    } catch (e) { throw new Error(DOWN); }
    const j = await r.json().catch(() => ({ error: "The server answered " + r.status + " " + r.statusText + "." }));
    if (!r.ok) throw new Error(j.error || r.statusText);
    return j;
  } finally { busy(false); }
}

// Show "Generating: step s of n" while a round generates (polls /api/progress).
async function generating(request) {
  const bar = $("progress");
  status("Generating...");
  const timer = setInterval(async () => {
    try {
      const p = await (await fetch("/api/progress")).json();
      if (p.steps > 0) {
        bar.hidden = false; bar.max = p.steps; bar.value = p.step;
        status("Generating: denoising step " + p.step + " of " + p.steps + "...");
      }
    } catch (e) { /* the request itself reports a server that is down */ }
  }, 300);
  try { return await request; } finally { clearInterval(timer); bar.hidden = true; }
}

function list(title, items) {
  const p = document.createElement("p"); p.textContent = title;
  const ul = document.createElement("ul");
  items.forEach((t) => { const li = document.createElement("li"); li.textContent = t; ul.append(li); });
  return [p, ul];
}

async function loadInfo() {
  try {
    const j = await (await fetch("/api/info")).json();
    const v = j.vocabulary, f = j.feedback;
    if (v) {
      $("vocabulary").replaceChildren(...list("Model " + j.model + ": prompts of the form \u201c" + v.caption +
        "\u201d, with", ["shapes: " + v.shapes.join(", "), "colours: " + v.colours.join(", "),
        "sizes: " + v.sizes.join(", "), "backgrounds: " + v.backgrounds.join(", ")]));
    } else {
      $("vocabulary").replaceChildren(...list("Model " + j.model + ": any text prompt.", []));
    }
    if (f) { $("feedback-help").replaceChildren(...list("Feedback the refiner turns into prompt edits:", f)); }
    $("info").hidden = false; $("info").open = Boolean(v);
  } catch (e) { status(DOWN, true); }
}
loadInfo();

function showRound(j) {
  session = j.session_id; chosen = null; images = j.images;
  $("start").hidden = true; $("next").hidden = true; $("round").hidden = false;
  $("round-title").textContent = "Round " + j.round;
  $("used-prompt").textContent = j.prompt;
  $("feedback").value = ""; $("satisfaction").value = "";
  const grid = $("images"); grid.replaceChildren();
  j.images.forEach((src, k) => {
    const b = document.createElement("button"); b.className = "pick"; b.title = "choose image " + (k + 1);
    const img = document.createElement("img"); img.src = src; img.alt = "image " + (k + 1);
    const n = document.createElement("span"); n.textContent = k + 1;
    b.append(img, n);
    b.onclick = () => {
      chosen = k; grid.querySelectorAll(".pick").forEach((p, i) => p.classList.toggle("selected", i === k));
      status("Image " + (k + 1) + " chosen: say what should change, then send.");
    };
    grid.append(b);
  });
  status("Round " + j.round + ": choose an image.");
}

function satisfaction() { const v = $("satisfaction").value; return v === "" ? null : (Number(v) - 1) / 4; }

function remember(round, prompt, src, feedback) {
  $("history").hidden = false;
  const li = document.createElement("li");
  const img = document.createElement("img"); img.src = src; img.alt = "chosen image of round " + round;
  const t = document.createElement("span"); t.textContent = "Round " + round + ": " + prompt + "  -  \u201c" + feedback + "\u201d";
  li.append(img, t); $("rounds").append(li);
}

$("generate").onclick = async () => {
  const prompt = $("prompt").value.trim();
  if (!prompt) { status("Type a prompt first.", true); return; }
  try { const j = await generating(api("/api/start", { prompt })); adapting = j.adapt; showRound(j); }
  catch (e) { status(e.message, true); }
};

$("send").onclick = async () => {
  if (chosen === null) { status("Click an image first.", true); return; }
  const feedback = $("feedback").value.trim();
  status(adapting ? "Adapting the model to your choice..." : "Sending...");
  try {
    const j = await api("/api/choose", { session_id: session, chosen, feedback, satisfaction: satisfaction() });
    remember(j.round, $("used-prompt").textContent, images[chosen], feedback);
    $("round").hidden = true; $("next").hidden = false; $("next-prompt").value = j.next_prompt;
    const adapted = j.adapted ? "Adapted the model to your choice: " + j.adapted.updates + " updates in " +
      j.adapted.seconds + " s (" + j.adapted.total_updates + " this session). " : "";
    status(adapted + "Check the next prompt, then generate the next round or finish.");
  } catch (e) { status(e.message, true); }
};

$("next-round").onclick = async () => {
  const prompt = $("next-prompt").value.trim();
  if (!prompt) { status("The prompt is empty.", true); return; }
  try { showRound(await generating(api("/api/next", { session_id: session, prompt }))); }
  catch (e) { status(e.message, true); }
};

async function finish(withRound) {
  const body = { session_id: session };
  if (withRound && chosen !== null) {
    body.chosen = chosen; body.feedback = $("feedback").value.trim(); body.satisfaction = satisfaction();
  }
  try {
    const j = await api("/api/finish", body);
    session = null;
    $("round").hidden = true; $("next").hidden = true; $("start").hidden = false; $("history").hidden = true;
    $("rounds").replaceChildren(); $("prompt").value = "";
    status("Saved dialogue " + j.dialogue_id + " (" + j.rounds + " rounds) to " + j.path +
           (j.lora ? " and its adapted LoRA to " + j.lora : "") + ". Start a new one?");
  } catch (e) { status(e.message, true); }
}
$("finish-round").onclick = () => finish(true);
$("finish-next").onclick = () => finish(false);
</script>
</body>
</html>
"""
