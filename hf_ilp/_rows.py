"""A training row's prompt and completion in either of TRL's formats (prompt-completion or
conversational `messages`), read one way by the learn-check, the diagnosis and the interventions."""


def split_messages(messages, where: str = "a `messages` row"):
    """(prompt turns, [answer]) of a conversational row, whose last message is the assistant's answer."""
    if not messages or len(messages) < 2 or messages[-1].get("role") != "assistant":
        roles = [m.get("role") for m in messages or []]
        raise ValueError(f"{where} must end with the assistant's answer after at least one turn; got roles {roles}")
    return messages[:-1], messages[-1:]


def as_text(value) -> str:
    """Plain text of a prompt or completion: a string as it is, conversational turns' contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)
