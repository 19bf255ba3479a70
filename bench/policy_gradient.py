"""N-HARPG vs normalized-momentum PG (N-PG-IGT, plain) vs vanilla REINFORCE on tabular MDPs.

Fatkhullin, Barakat, Kireeva & He, ICML 2023, arXiv:2302.01734. The paper's headline claim:
N-HARPG (one Hessian-vector-product correction per step, two trajectories) needs fewer
sampled trajectories to reach an epsilon-optimal policy (O~(eps^-2)) than N-PG-IGT
(O~(eps^-2.5)) and than vanilla policy gradient (O~(eps^-3) in earlier analyses); its
experiments are on MuJoCo / CartPole-type tasks with neural policies, out of reach of two
shared CPU cores. Here: two small tabular MDPs with a softmax policy (exact returns in
closed form, rho^T (I - gamma P_pi)^{-1} r_pi, and the optimum by value iteration):

* ``two_state``: the 2-state, 2-action MDP of the unit tests (gamma 0.8, horizon 12);
* ``chain``: a 3-state chain (gamma 0.9, horizon 20) whose good reward is two risky steps
  to the right, with a small safe reward on the left (a local trap for greedy ascent).

Rows "N-HARPG eta=0.1" (a constant momentum weight) and "N-HARPG decaying" (step
gamma_t = gamma_0 2/(t+2), decaying with eta_t = 2/(t+2)) separate the schedule from the
estimator. GPOMDP surrogates; budget 1000 trajectories (HARPG: 500 steps of 2 trajectories; the
others: 1000 steps of 1); learning rates from a grid of 3 per method (the best final gap
over 3 seeds reported, every lr kept in the JSON); 3 seeds. Metric: the exact optimality
gap J* - J(theta) against the number of trajectories sampled, and the trajectories until
the gap stays below 0.1, 0.01, 0.001 (per seed).

    nice -n 10 python bench/policy_gradient.py           # about 2 min on 2 busy shared cores
    nice -n 10 python bench/policy_gradient.py --quick   # smoke run (writes to /tmp)

Writes bench/results/policy_gradient.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from optim.loops import harpg_step, policy_gradient_init  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results" / "policy_gradient.json"
EPS = (0.1, 0.01, 0.001)

MDPS = {
  "two_state": dict(
    P=[[[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.05, 0.95]]],
    R=[[0.0, 0.2], [1.0, 0.5]],
    rho=[0.6, 0.4],
    gamma=0.8,
    horizon=12,
  ),
  "chain": dict(
    # actions: 0 left (safe), 1 right (succeeds w.p. 0.8, else falls back to state 0)
    P=[
      [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0]],
      [[1.0, 0.0, 0.0], [0.2, 0.0, 0.8]],
      [[0.0, 1.0, 0.0], [0.2, 0.0, 0.8]],
    ],
    R=[[0.1, 0.0], [0.0, 0.0], [0.0, 1.0]],
    rho=[1.0, 0.0, 0.0],
    gamma=0.9,
    horizon=20,
  ),
}

METHODS = {
  # name: (harpg_step keywords, trajectories per step, learning-rate grid)
  "N-HARPG": (dict(variant="harpg"), 2, (0.03, 0.1, 0.3)),
  # the same with a constant momentum weight, and with the step decaying as eta_t
  "N-HARPG eta=0.1": (dict(variant="harpg", momentum=0.1), 2, (0.03, 0.1, 0.3)),
  "N-HARPG decaying": (dict(variant="harpg", decay=True), 2, (0.3, 1.0, 3.0)),
  "N-PG-IGT": (dict(variant="igt"), 1, (0.03, 0.1, 0.3)),
  "N-momentum": (dict(variant="momentum"), 1, (0.03, 0.1, 0.3)),
  "REINFORCE": (dict(variant="momentum", momentum=1.0, normalize=False), 1, (0.1, 0.3, 1.0)),
}


def build(spec):
  P, R, rho = (jnp.asarray(spec[k], jnp.float64) for k in ("P", "R", "rho"))
  gamma, H = spec["gamma"], spec["horizon"]
  n = P.shape[0]

  def sample(th, key):
    k0, k = jax.random.split(key)
    s0 = jax.random.categorical(k0, jnp.log(rho))

    def body(s, k):
      ka, ks = jax.random.split(k)
      a = jax.random.categorical(ka, th[s])
      return jax.random.categorical(ks, jnp.log(P[s, a])), (s, a)

    return jax.lax.scan(body, s0, jax.random.split(k, H))[1]

  def log_prob(th, traj):
    ss, aa = traj
    return jnp.sum(jax.nn.log_softmax(th, axis=-1)[ss, aa])

  def surrogate(th, traj):
    ss, aa = traj
    lp = jax.nn.log_softmax(th, axis=-1)[ss, aa]
    return jnp.sum(R[ss, aa] * gamma ** jnp.arange(H) * jnp.cumsum(lp))

  def ret(th):
    pi = jax.nn.softmax(th, axis=-1)
    p_pi = jnp.einsum("sa,sat->st", pi, P)
    return rho @ jnp.linalg.solve(jnp.eye(n) - gamma * p_pi, jnp.sum(pi * R, 1))

  v = np.zeros(n)
  for _ in range(5000):
    v = np.max(np.asarray(R) + gamma * np.asarray(P) @ v, axis=1)
  return sample, surrogate, log_prob, ret, float(np.asarray(rho) @ v), (n, P.shape[1])


def run_method(mdp, kw, grid, budget, per_step, seeds, every):
  """Gaps (lr, seed, checkpoint); the lr grid and the seeds are vmapped (one compilation)."""
  sample, surrogate, log_prob, ret, j_star, shape = mdp
  steps = budget // per_step
  record = every // per_step

  kw = dict(kw)
  decay = kw.pop("decay", False)

  def one(lr, seed):
    rate = (lambda t: lr * 2.0 / (t + 2.0)) if decay else lr

    def body(state, k):
      s = harpg_step(
        surrogate, sample, state, key=k, learning_rate=rate, log_prob_fn=log_prob, **kw
      )
      return s, j_star - ret(s.params)

    state = policy_gradient_init(jnp.zeros(shape))
    _, gaps = jax.lax.scan(body, state, jax.random.split(jax.random.key(seed), steps))
    return gaps[record - 1 :: record]

  f = jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None))
  return np.asarray(jax.jit(f)(jnp.asarray(grid, jnp.float64), jnp.arange(seeds)))


def first_reach(gaps, trajectories, eps):
  """Per seed: trajectories until the gap first stays <= eps (None if never)."""
  out = []
  for g in gaps:
    ok = np.nonzero(g > eps)[0]
    i = 0 if len(ok) == 0 else ok[-1] + 1
    out.append(int(trajectories[i]) if i < len(g) else None)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  budget, seeds, every = (200, 2, 20) if args.quick else (1000, 3, 10)
  out = {"budget_trajectories": budget, "seeds": seeds, "every": every, "mdps": {}}
  t0 = time.time()
  for name, spec in MDPS.items():
    mdp = build(spec)
    sample, surrogate, log_prob, ret, j_star, shape = mdp
    j0 = float(ret(jnp.zeros(shape)))
    res = {"j_star": j_star, "j_uniform": j0, "methods": {}}
    for mname, (kw, per_step, grid) in METHODS.items():
      all_gaps = run_method(mdp, kw, grid, budget, per_step, seeds, every)
      runs = {str(lr): all_gaps[i].tolist() for i, lr in enumerate(grid)}
      best = min(runs, key=lambda k: np.mean(np.asarray(runs[k])[:, -1]))
      g = np.asarray(runs[best])
      traj = list(range(every, budget + 1, every))
      reach = {str(e): first_reach(g, traj, e) for e in EPS}
      res["methods"][mname] = {
        "best_lr": float(best),
        "trajectories": traj,
        "gap_mean": g.mean(0).tolist(),
        "gap_final_per_seed": g[:, -1].tolist(),
        "trajectories_to_gap": reach,
        "runs": runs,
      }
      print(
        f"{name:9s} {mname:16s} lr {best:>5s}  final gap {g.mean(0)[-1]:.1e}  trajectories to "
        + " ".join(f"gap<={e:g}: {reach[str(e)]}" for e in EPS)
        + f"  (J* {j_star:.3f}, J0 {j0:.3f})",
        flush=True,
      )
    out["mdps"][name] = res
  out["seconds"] = time.time() - t0
  path = pathlib.Path("/tmp/policy_gradient.json") if args.quick else OUT
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path} in {out['seconds']:.0f}s")


if __name__ == "__main__":
  main()
