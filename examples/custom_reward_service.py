"""A custom reward service in a few lines: write a function, serve it with one command.

    rpp-reward-server --scorer user --function examples/custom_reward_service.py:brevity_reward --port 50051
    rpp-reward-server --scorer user --function examples/custom_reward_service.py:step_rewards \
        --kind process --port 50052

Outcome functions take a Sample and return a float; process functions also get the step
texts and return one float per step. Either may be ``async``. A bad return value (NaN,
wrong type, wrong number of step scores) or an exception becomes a per-sample error;
the server keeps serving. Call it from Python:

    from reward_server.client import BlockingRewardClient
    from reward_server.types import Sample
    with BlockingRewardClient("127.0.0.1:50051") as client:
        print(client.score([Sample(id="1", prompt="2+2?", response="4", reference="4")]))

or with grpcurl through server reflection: see examples/grpcurl.md.
"""

from reward_server.types import Sample


def brevity_reward(sample: Sample) -> float:
    """1 for a correct answer, minus a small penalty per 100 characters."""
    correct = sample.reference is not None and sample.response.strip().endswith(sample.reference.strip())
    return float(correct) - 0.01 * len(sample.response) / 100


def step_rewards(sample: Sample, steps: list[str]) -> list[float]:
    """Reward steps that show their work (contain an '='); one score per step."""
    return [1.0 if "=" in step else 0.0 for step in steps]
