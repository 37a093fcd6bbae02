"""The OpenAPI 3 description of the API (served at /openapi.json, used by schemathesis)."""

from __future__ import annotations

import copy

from gears.asker import DEFAULT_K, DEFAULT_N, MAX_K, MAX_N, MAX_QUESTION_CHARS
from records.events import MAX_FEEDBACK_CHARS, VERDICTS

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            for c in codes}


_ANSWER_OK = {"description": "the answer", "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}}


def _json_body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _qa_path() -> dict:
    return {
        "get": {
            "summary": "Answer a question",
            "parameters": [
                {"name": "q", "in": "query", "required": True,
                 "schema": {"type": "string", "minLength": 1,
                            "maxLength": MAX_QUESTION_CHARS}},
                {"name": "k", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K,
                            "default": DEFAULT_K}},
                {"name": "n", "in": "query", "required": False, "schema": _N},
                {"name": "min_confidence", "in": "query", "required": False,
                 "schema": _MIN_CONFIDENCE},
            ],
            "responses": {"200": _ANSWER_OK, **_errors(400, 401, 429, 503)},
        },
        "post": {
            "summary": "Answer a question (JSON body)",
            "requestBody": _json_body("Question"),
            "responses": {"200": _ANSWER_OK, **_errors(400, 401, 413, 415, 429, 503)},
        },
    }


def _paths() -> dict:
    return {
        "/qa": _qa_path(),
        "/feedback": {"post": {
            "summary": "Record whether an answer was right (the database of record)",
            "requestBody": _json_body("Feedback"),
            "responses": {"202": {"description": "logged", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "status": {"type": "string"}, "id": {"type": "string"}}}}}},
                **_errors(400, 401, 413, 415, 429)},
        }},
        "/health": {"get": {"summary": "Cluster and workers", "responses": {
            "200": {"description": "healthy", "content": {"application/json": {
                "schema": {"type": "object"}}}},
            "503": {"description": "degraded or down", "content": {"application/json": {
                "schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {
                "schema": {"type": "string"}}}}}}},
    }


_N = {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": DEFAULT_N,
      "description": "how many distinct answers: with n > 1 the body has 'answers'"}

_MIN_CONFIDENCE = {
    "type": "number", "minimum": 0, "maximum": 1,
    "description": "below this confidence the answer is null with a reason (0: off); "
                   "absent: the server's --min-confidence"}

_PASSAGE = {"type": "object", "nullable": True, "properties": {
    "id": {"type": "string"}, "title": {"type": "string", "nullable": True},
    "text": {"type": "string", "nullable": True}}}

_ANSWER_SPAN = {"type": "object", "properties": {
    "answer": {"type": "string"}, "score": {"type": "number"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "passage": _PASSAGE, "start": {"type": "integer"}, "end": {"type": "integer"},
    "retrieval": {"type": "object"}}}

_ANSWER = {"type": "object", "properties": {
    "question": {"type": "string"},
    "answer": {"type": "string", "nullable": True},
    "score": {"type": "number", "nullable": True},
    "passage": _PASSAGE,
    "start": {"type": "integer", "nullable": True},
    "end": {"type": "integer", "nullable": True},
    "cached": {"type": "boolean"},
    "k": {"type": "integer"},
    "generation": {"type": "integer"},
    "passages_read": {"type": "array", "items": {"type": "string"}},
    "missing_partitions": {
        "type": "array", "items": {"type": "integer"},
        "description": "present when candidate partitions had no live worker: "
                       "the answer comes from the others"},
    "reason": {"type": "string",
               "description": "present when passages were read and the reader "
                              "said 'no answer', or the answer's confidence was below "
                              "min_confidence (answer is null)"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1,
                   "description": "the answer's probability among the candidate "
                                  "spans of all passages read"},
    "answers": {"type": "array", "items": _ANSWER_SPAN, "maxItems": MAX_N,
                "description": "present when n > 1: the n best distinct answers (fewer if "
                               "the passages read hold fewer), best first; the first is "
                               "the answer above"},
    "timings_ms": {"type": "object",
                   "additionalProperties": {"type": "number"}}}}

_FEEDBACK = {"type": "object", "required": ["question", "answer", "verdict"],
             "additionalProperties": False, "properties": {
    "question": {"type": "string", "minLength": 1,
                 "maxLength": MAX_FEEDBACK_CHARS},
    "answer": {"type": "string", "nullable": True,
               "maxLength": MAX_FEEDBACK_CHARS},
    "verdict": {"type": "string", "enum": list(VERDICTS)},
    "correct_answer": {"type": "string", "minLength": 1,
                       "maxLength": MAX_FEEDBACK_CHARS,
                       "description": "with verdict 'wrong' only"}}}


def _schemas() -> dict:
    return {
        "Question": {"type": "object", "required": ["question"], "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION_CHARS},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K},
            "n": _N, "min_confidence": _MIN_CONFIDENCE}},
        "Answer": _ANSWER,
        "Feedback": _FEEDBACK,
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "object", "properties": {
                "status": {"type": "integer"}, "message": {"type": "string"}}}}},
    }


def spec() -> dict:
    """A fresh dict each call, so a caller that changes it changes no other's copy."""
    return copy.deepcopy({
        "openapi": "3.0.3",
        "info": {"title": "shardqa", "version": "0.1.0",
                 "description": "Extractive question answering over a Redis Cluster"},
        "paths": _paths(),
        "components": {"schemas": _schemas()},
    })
