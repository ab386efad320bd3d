"""``python -m lit_pref interact``: the interactive co-adaptation tool, a local web page or a terminal session.

A person types a prompt and sees K images; picks one and writes feedback; the refiner proposes the next prompt
(editable); and so on until "finish", which appends the session to ``--output`` as one dialogue line
(:mod:`lit_pref.formats.dialogues`), so it becomes training data. Every round's images are written as PNG files to
``<output stem>_images/<dialogue id>/r<round>_<k>.png`` beside the output file when they are generated.

Co-adaptation (``--adapt``): after each choice, :class:`~lit_pref.vca.adapt.LiveAdapter` makes ``--adapt_updates``
Diffusion-DPO steps of the LoRA on the pairs (chosen ≻ each unchosen image) of the session's latest
``--adapt_history`` rounds, at the noisiest timesteps (``--adapt_timestep_range``), so the next round is drawn from
the adapted model; a new session starts from the LoRA the tool was started with, or with ``--adapt_carry_over``
from the LoRA the earlier sessions adapted (the tool keeps learning one person). With ``--adapt_reward`` (a reward
model folder, e.g. one trained on the person's dialogues) the steps are PPO on that reward instead
(:class:`~lit_pref.vca.adapt_ppo.LivePPOAdapter`: each step samples fresh chains of the round's prompt). An adapting
tool serves one person at a time (sessions share the model).

The pieces: :mod:`lit_pref.vca.studio` (sessions), :mod:`lit_pref.vca.server` (the web page and its JSON
endpoints), :mod:`lit_pref.vca.terminal` (the terminal session); this module parses the command line.
"""

from __future__ import annotations

import errno
import sys

import torch
from jsonargparse import Namespace, lazy_instance

from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone import lora_config
from lit_pref.commands import SubcommandParser, call, exit_with_error, function_parser
from lit_pref.rewards import RewardModelScorer
from lit_pref.vca.adapt import LiveAdapter, SessionAdapter
from lit_pref.vca.adapt_ppo import LivePPOAdapter
from lit_pref.vca.refiner import PromptRefiner, TemplateRefiner
from lit_pref.vca.server import LOCAL_HOSTS, make_server
from lit_pref.vca.studio import Studio
from lit_pref.vca.terminal import run_terminal

__all__ = ["build_parser", "main", "open_studio", "parse_args", "serve", "studio_from_args"]


def open_studio(
    backbone: DiffusionBackbone = lazy_instance(DiffusionBackbone, model="toy"),
    refiner: PromptRefiner = lazy_instance(TemplateRefiner),
    lora: str | None = None,
    output: str = "dialogues.jsonl",
    category: str | None = None,
    num_images: int = 4,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    eta: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    session_timeout: float = 3600.0,
    adapt: bool = False,
    adapt_updates: int | None = None,
    adapt_lr: float | None = None,
    adapt_beta: float = 5000.0,
    adapt_timestep_range: tuple[float, float] = (0.6, 1.0),
    adapt_history: int | None = 4,
    adapt_fresh_optimizer: bool = False,
    adapt_carry_over: bool = False,
    adapt_reward: str | None = None,
    adapt_reward_images: int = 32,
) -> Studio:
    """The :class:`~lit_pref.vca.studio.Studio` the tool serves.

    Args:
        backbone: The text-to-image model (default: the toy model); with ``lora``, built with the LoRA's rank and
            targets (:func:`studio_from_args`).
        refiner: The prompt refiner (default: TemplateRefiner; CausalLMRefiner for a chat model).
        lora: A LoRA folder (DiffusionBackbone.save_lora) to load; its rank and targets are used.
        output: Dialogue JSONL file to append to.
        category: Label saved with every dialogue.
        num_images: Images per round (K).
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance scale.
        eta: DDIM eta.
        seed: Seed of the first round (later rounds use the next seeds).
        device: 'auto' (cuda when available), 'cpu', 'cuda', ...
        session_timeout: Seconds a web session may stay idle before it is saved and closed (not in the terminal).
        adapt: Adapt the LoRA after each choice (Diffusion-DPO on the round's pairs, or PPO with
            ``adapt_reward``); finishing saves it.
        adapt_updates: Optimizer steps after each choice (null: 4 DPO steps, or 2 PPO steps).
        adapt_lr: Learning rate of the adaptation (null: 3e-3 for DPO, 5e-4 for PPO).
        adapt_beta: Diffusion-DPO beta of the adaptation.
        adapt_timestep_range: Fractions of the training timesteps the adaptation draws from (the noisiest 40% by
            default: where the layout is decided).
        adapt_history: Rounds of the session whose pairs every adaptation step trains on (the latest ones; null:
            all of them).
        adapt_fresh_optimizer: Start every round's adaptation from a fresh AdamW state (no momentum from the
            earlier rounds; the LoRA carries over).
        adapt_carry_over: A new session keeps the LoRA the earlier sessions adapted (one person's dialogues in a
            row); by default every session starts from the LoRA the tool was started with.
        adapt_reward: A reward model folder (written by ``lit_pref.modules.RewardModel``): adapt by PPO on its
            score (``LivePPOAdapter``) instead of DPO; the DPO options (beta, timestep range, history, fresh
            optimizer) then do not apply.
        adapt_reward_images: Chains of the round's prompt each PPO step samples and scores (--adapt_reward).
    """
    if lora is not None:
        backbone.load_lora(lora)
    backbone = backbone.to(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    ppo = adapt_reward is not None
    if ppo and not adapt:
        raise ValueError(f"adapt_reward={adapt_reward!r} is the reward of the adaptation: give adapt=true too")
    adapter: SessionAdapter | None = None
    given = {name: value for name, value in (("updates", adapt_updates), ("lr", adapt_lr)) if value is not None}
    if adapt and ppo:  # updates and lr not given: the adapter's own defaults
        adapter = LivePPOAdapter(backbone, RewardModelScorer(adapt_reward, device=str(backbone.device)),
                                 num_images=adapt_reward_images, num_inference_steps=num_inference_steps,
                                 guidance_scale=guidance_scale, seed=seed, carry_over=adapt_carry_over, **given)
    elif adapt:
        adapter = LiveAdapter(backbone, beta=adapt_beta, timestep_range=adapt_timestep_range, history=adapt_history,
                              seed=seed, fresh_optimizer=adapt_fresh_optimizer, carry_over=adapt_carry_over, **given)
    return Studio(backbone, refiner, output, num_images, num_inference_steps, guidance_scale, eta, seed, category,
                  session_timeout=session_timeout, adapter=adapter)


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 8765, terminal: bool = False) -> None:
    """Serves ``studio`` until Ctrl+C (web) or the end of the session (terminal).

    Args:
        studio: The sessions.
        host: Must be 127.0.0.1 or localhost.
        port: Port (0: any free port; the URL is printed).
        terminal: Run in the terminal instead of a web page.
    """
    if terminal:
        studio.session_timeout = float("inf")  # one person at the keyboard: a session never idles out
        if hasattr(sys.stdin, "reconfigure"):  # undecodable bytes become lone surrogates, which the terminal refuses
            sys.stdin.reconfigure(errors="surrogateescape")
        run_terminal(studio, sys.stdin, sys.stdout)
        return
    try:
        server = make_server(studio, host, port)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise SystemExit(f"lit_pref interact: port {port} is in use (another interact?); choose another with "
                         f"--port N, or --port 0 for any free port") from None
    print(f"lit_pref interact: open http://127.0.0.1:{server.server_address[1]}/  (Ctrl+C to stop; "
          f"dialogues go to {studio.output})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def build_parser() -> SubcommandParser:
    """The ``interact`` parser: the arguments of :func:`open_studio` and :func:`serve`, and ``--config``."""
    parser = function_parser(open_studio, "interact", __doc__.split("\n\n")[0])
    parser.add_function_arguments(serve, skip={"studio"}, fail_untyped=True)
    return parser


def parse_args(argv: list[str]) -> Namespace:
    """Parses and checks ``interact`` arguments (the host is refused here, before any model is loaded)."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    if cfg.host not in LOCAL_HOSTS:
        exit_with_error(parser, f"--host {cfg.host!r} refused: the tool serves localhost only "
                                f"({', '.join(LOCAL_HOSTS)})")
    if cfg.num_images < 1:
        exit_with_error(parser, f"--num_images must be at least 1, got {cfg.num_images}")
    return cfg


def studio_from_args(cfg: Namespace) -> Studio:
    """The :class:`Studio` of parsed arguments, its backbone built with the rank and targets of ``--lora``."""
    if cfg.lora is not None:
        for key, value in lora_config(cfg.lora).items():  # build the adapters the saved LoRA fits
            cfg[f"backbone.init_args.{key}"] = value
    return call(open_studio, build_parser(), cfg)


def main(argv: list[str]) -> None:
    """``python -m lit_pref interact [--config interact.yaml] [--terminal true] ...``"""
    cfg = parse_args(argv)
    serve(studio_from_args(cfg), cfg.host, cfg.port, cfg.terminal)
