// Renders every tune of the report with abcjs and plays it with WebAudio oscillators (no sound fonts,
// so playback works from a file, offline). Sets data-rendered and data-errors on <body> when done,
// which the browser test reads.
(function () {
  const tunes = JSON.parse(document.getElementById("tunes").textContent);
  let rendered = 0;
  let playing = null;

  function stop() {
    if (!playing) return;
    playing.context.close();
    playing.button.textContent = "\u25B6 play";
    playing = null;
  }

  function play(visual, button) {
    const same = playing && playing.button === button;
    stop();
    if (same) return;
    const context = new (window.AudioContext || window.webkitAudioContext)();
    const meter = visual.getMeterFraction();
    const secondsPerWhole = visual.millisecondsPerMeasure() / 1000 / (meter.num / meter.den || 1);
    const now = context.currentTime + 0.05;
    let end = now;
    for (const track of visual.setUpAudio().tracks) {
      for (const event of track) {
        if (event.cmd !== "note" || event.pitch === undefined) continue;
        const start = now + event.start * secondsPerWhole;
        const length = Math.max(event.duration * secondsPerWhole - 0.02, 0.03);
        const oscillator = context.createOscillator();
        const gain = context.createGain();
        oscillator.type = "triangle";
        oscillator.frequency.value = 440 * Math.pow(2, (event.pitch - 69) / 12);
        gain.gain.setValueAtTime(0, start);
        gain.gain.linearRampToValueAtTime(0.25 * (event.volume || 80) / 127, start + 0.01);
        gain.gain.exponentialRampToValueAtTime(0.001, start + length);
        oscillator.connect(gain).connect(context.destination);
        oscillator.start(start);
        oscillator.stop(start + length + 0.01);
        end = Math.max(end, start + length);
      }
    }
    button.textContent = "\u25A0 stop";
    playing = { context, button };
    setTimeout(() => { if (playing && playing.context === context) stop(); }, (end - now + 0.2) * 1000);
  }

  for (const tune of tunes) {
    const target = document.getElementById(tune.id + "-score");
    const visual = ABCJS.renderAbc(target, tune.abc, { responsive: "resize", add_classes: true })[0];
    if (target.querySelector("svg")) rendered += 1;
    document.getElementById(tune.id + "-play").addEventListener("click", (e) => play(visual, e.currentTarget));
  }
  document.body.dataset.rendered = String(rendered);
  document.body.dataset.errors = String(window.reportErrors.length);
})();
