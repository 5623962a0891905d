"""A training row's prompt and completion in either of TRL's formats (prompt-completion or
conversational `messages`), read one way by the learn-check, the diagnosis and the interventions."""


def split_messages(messages, where: str = "a `messages` row"):
    """(prompt turns, [answer]) of a conversational row, whose last message is the assistant's answer."""
    if not messages or len(messages) < 2 or messages[-1].get("role") != "assistant":
        roles = [m.get("role") for m in messages or []]
        raise ValueError(f"{where} must end with the assistant's answer after at least one turn; got roles {roles}")
    return messages[:-1], messages[-1:]


def as_text(value, roles: bool = False) -> str:
    """Plain text of a prompt or completion: a string as it is, conversational turns' contents joined by
    newlines (each after its `role: ` with `roles=True`, the conversation as a reader sees it)."""
    if isinstance(value, str):
        return value
    if roles:
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return "\n".join(str(m.get("content", "")) for m in value)
