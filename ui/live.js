() => {
  // EditX Studio's live player (ui/live.js, loaded once with the page).
  //
  // While a clone or an edit runs, the server sends each new piece of audio as the value of the output
  // player, with a "details" JSON saying how far it got. This script plays those pieces one after the
  // other with the Web Audio API (no gap, no restart), writes the progress line under the button, and
  // leaves the finished file to the output player when the run ends. ui/page.py wires it:
  //   button click   -> editxLive.arm(name)       (a user gesture: the browser lets audio start)
  //   details change -> editxLive.update(name, audio, details)
  //   Stop click     -> editxLive.stop(name);  failure -> editxLive.failed(name)
  // editxLive.state(name) tells the browser tests what is playing, and the last details received.
  const runs = {};
  let context = null;

  function audioContext() {
    if (!context) {
      const Context = window.AudioContext || window.webkitAudioContext;
      context = new Context();
    }
    if (context.state === "suspended") context.resume();
    return context;
  }

  function fresh() {
    return { done: false, stopped: false, queued: 0, scheduled: 0, chain: Promise.resolve(), sources: [],
             nextTime: 0, firstStart: null, playing: false, audibleBeforeDone: false };
  }

  function run(name) {
    return runs[name] || (runs[name] = fresh());
  }

  function silence(r) {
    if (!r) return;
    r.stopped = true;
    for (const source of r.sources) {
      try { source.stop(); } catch (e) { /* already ended */ }
    }
    r.sources = [];
  }

  function output(name) {
    return document.querySelector(`#${name}-output`);
  }

  function setStatus(name, text, state) {
    const line = document.querySelector(`#${name}-status .run-status`);
    if (line) {
      line.textContent = text;
      line.dataset.state = state;
    }
  }

  function watch() {
    for (const r of Object.values(runs)) {
      if (!context || r.firstStart === null) continue;
      const now = context.currentTime;
      r.playing = context.state === "running" && now >= r.firstStart && now < r.nextTime && !r.stopped;
      if (r.playing && !r.done) r.audibleBeforeDone = true;
    }
  }
  setInterval(watch, 50);

  function enqueue(r, url) {
    r.queued += 1;
    r.chain = r.chain.then(async () => {
      if (r.stopped) return;
      const response = await fetch(url);
      const bytes = await response.arrayBuffer();
      const ctx = audioContext();
      const audio = await ctx.decodeAudioData(bytes);
      if (r.stopped) return;
      const source = ctx.createBufferSource();
      source.buffer = audio;
      source.connect(ctx.destination);
      const at = Math.max(ctx.currentTime + 0.05, r.nextTime);
      source.start(at);
      r.sources.push(source);
      if (r.firstStart === null) r.firstStart = at;
      r.nextTime = at + audio.duration;
      r.scheduled += 1;
    }).catch((error) => console.warn("EditX live player:", error));
  }

  function progressText(details, r) {
    const parts = [];
    if (details.chunks) parts.push(`Chunk ${details.chunk} of ${details.chunks}`);
    if (details.stage === "retry") parts.push("no audio yet, trying another seed");
    parts.push(`${Number(details.audio_s || 0).toFixed(1)} s of audio made`);
    if (r.scheduled) parts.push("playing as it is made");
    return parts.join(" · ");
  }

  window.editxLive = {
    arm(name) {
      silence(runs[name]);
      runs[name] = fresh();
      try { audioContext(); } catch (e) { console.warn("EditX live player: no audio output", e); }
    },
    update(name, audio, details) {
      if (!details || typeof details !== "object") return;
      const r = run(name);
      r.details = details;
      const player = output(name);
      if (details.status === "running") {
        if (player) player.dataset.live = "1";
        if (details.pieces > r.queued && audio && audio.url) enqueue(r, audio.url);
        setStatus(name, progressText(details, r), "running");
      } else {
        r.done = true;
        if (player) delete player.dataset.live;
        setStatus(name, details.status === "stopped" ? "Stopping…" : "Finishing…", "finishing");
      }
    },
    stop(name) {
      silence(runs[name]);
    },
    failed(name) {
      const r = run(name);
      r.done = true;
      silence(r);
      const player = output(name);
      if (player) delete player.dataset.live;
      setStatus(name, "Not done: see the message.", "error");
    },
    state(name) {
      watch();
      const r = run(name);
      return { queued: r.queued, scheduled: r.scheduled, playing: r.playing, done: r.done,
               audibleBeforeDone: r.audibleBeforeDone, stopped: r.stopped, details: r.details || null };
    },
  };
}
