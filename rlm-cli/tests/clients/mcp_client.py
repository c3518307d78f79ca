"""Drives `rlm mcp` with the official `mcp` Python package, as a stdio client.

Usage: mcp_client.py RLM_BINARY ROOT_DIR BASE_URL
ROOT_DIR holds notes.txt, docs/{a,b}.txt and link.txt (a symlink to a file outside it).
The mock model answers every query with "ECHO: " + the context upper-cased.
"""

import asyncio
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

rlm, root, base_url = sys.argv[1], sys.argv[2], sys.argv[3]


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def main():
    params = StdioServerParameters(
        command=rlm,
        args=["mcp", "--root", root, "--model", "root-model", "--sub-model", "sub-model",
              "--base-url", base_url, "--quiet"],
        env={"OPENAI_API_KEY": "sk-mcp-test-key", "PATH": os.environ.get("PATH", "")},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            names = [t.name for t in tools.tools]
            assert names == ["rlm_answer"], names
            schema = tools.tools[0].input_schema
            assert set(schema["properties"]) == {"query", "paths", "text", "output_schema"}, schema

            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            result = await session.call_tool(
                "rlm_answer", {"query": "What does it say?", "paths": ["notes.txt"]},
                progress_callback=on_progress,
            )
            assert not result.is_error, text(result)
            assert result.content[0].text == "ECHO: THE NOTES", text(result)
            assert "stopped: final" in text(result), text(result)
            assert any(m and m.startswith("Turn 1") for m in progress), progress
            print("paths ok:", result.content[0].text, f"({len(progress)} progress notifications)")

            result = await session.call_tool(
                "rlm_answer", {"query": "q", "text": "inline text"})
            assert result.content[0].text == "ECHO: INLINE TEXT", text(result)
            print("text ok")

            # A typed answer: structuredContent holds it (a non-object under "result").
            result = await session.call_tool(
                "rlm_answer",
                {"query": "q", "text": "typed text", "output_schema": {"type": "string"}})
            assert not result.is_error, text(result)
            assert result.structured_content == {"result": "ECHO: TYPED TEXT"}, result
            assert result.content[0].text == '"ECHO: TYPED TEXT"', text(result)
            result = await session.call_tool(
                "rlm_answer",
                {"query": "q", "text": "t", "output_schema": {"type": "strnig"}})
            assert result.is_error and "not a valid JSON Schema" in text(result), text(result)
            print("typed ok")

            for outside in ["../outside.txt", os.path.join(root, "..", "outside.txt"),
                            "link.txt", "/etc/hostname"]:
                result = await session.call_tool(
                    "rlm_answer", {"query": "q", "paths": [outside]})
                assert result.is_error, (outside, text(result))
                message = text(result)
                assert "outside the allowed roots" in message or "no such file" in message, message
                assert "SECRET" not in message.upper(), message
            result = await session.call_tool("rlm_answer", {"query": "q", "paths": ["docs"]})
            assert result.is_error and "links outside" in text(result), text(result)
            print("refusals ok")


asyncio.run(main())
