"""``/api/v1/swagger.json``: an OpenAPI 2.0 description of the API this
inbox serves (Mailpit's routes it has, MailHog's, the events), written
from :data:`OPERATIONS`; a test checks that every route is described and
every description routed.
"""
from typing import Any, Dict, List, Tuple

from smtpd_compat._version import VERSION
from smtpd_compat.web.api import Request

__all__ = ['OPERATIONS', 'document', 'get_swagger']


def _ref(name: str) -> Dict[str, str]:
    return {'$ref': '#/definitions/' + name}


def _array(items: Dict[str, Any]) -> Dict[str, Any]:
    return {'type': 'array', 'items': items}


_STRING = {'type': 'string'}
_INT = {'type': 'integer'}
_BOOL = {'type': 'boolean'}
_OK = {'description': 'the text "ok"', 'schema': _STRING}
_ERROR = {'description': 'what is wrong, as plain text', 'schema': _STRING}
_NOT_FOUND = {'description': 'no such message (plain text)', 'schema': _STRING}


def _path(name: str, text: str) -> Dict[str, Any]:
    return {'name': name, 'in': 'path', 'required': True, 'type': 'string',
            'description': text}


def _query(name: str, text: str, kind: str = 'string', required: bool = False) -> Dict[str, Any]:
    return {'name': name, 'in': 'query', 'required': required, 'type': kind,
            'description': text}


def _body(schema: Dict[str, Any]) -> Dict[str, Any]:
    return {'name': 'body', 'in': 'body', 'required': False, 'schema': schema}


_ID = _path('ID', 'the message ID, or "latest"')
_PAGING = [_query('start', 'offset (default 0)', 'integer'),
           _query('limit', 'how many (default 50)', 'integer')]
_TZ = _query('tz', 'the time zone (IANA name) of before:/after: dates without an offset')
_SEARCH = _query('query', 'a search (Mailpit syntax)', required=True)
_LIST = {'description': 'a page of message summaries', 'schema': _ref('MessagesSummary')}
_MAILHOG = {'description': "MailHog's message list", 'schema': _ref('MailHogMessages')}

#: ``(method, path, tag, summary, parameters, responses)`` of every
#: operation served.
OPERATIONS: List[Tuple[str, str, str, str, List[Dict[str, Any]], Dict[str, Any]]] = [
    ('get', '/api/v1/messages', 'messages', 'List messages, newest first',
     _PAGING, {'200': _LIST}),
    ('put', '/api/v1/messages', 'messages',
     'Set the read status of the messages named by IDs, or matching Search, or of all',
     [_TZ, _body({'type': 'object', 'properties': {
         'IDs': _array(_STRING), 'Read': _BOOL, 'Search': _STRING}})],
     {'200': _OK, '400': _ERROR}),
    ('delete', '/api/v1/messages', 'messages',
     'Delete the messages named by IDs; all of them when no IDs are given',
     [_body({'type': 'object', 'properties': {'IDs': _array(_STRING)}})],
     {'200': _OK, '400': _ERROR}),
    ('get', '/api/v1/search', 'messages', 'Search messages',
     [_SEARCH, _TZ] + _PAGING, {'200': _LIST, '400': _ERROR}),
    ('delete', '/api/v1/search', 'messages', 'Delete the messages a search matches',
     [_SEARCH, _TZ], {'200': _OK, '400': _ERROR}),
    ('post', '/api/v1/send', 'message', 'Put a message built from JSON in the inbox',
     [_body(_ref('SendRequest'))],
     {'200': {'description': 'the new message', 'schema': {
         'type': 'object', 'properties': {'ID': _STRING}}},
      '400': {'description': 'what is wrong', 'schema': {
          'type': 'object', 'properties': {'Error': _STRING}}}}),
    ('get', '/api/v1/message/{ID}', 'message', 'A message; marks it read',
     [_ID], {'200': {'description': 'the message', 'schema': _ref('Message')},
             '404': _NOT_FOUND}),
    ('get', '/api/v1/message/{ID}/headers', 'message',
     'The headers, decoded, by canonical name', [_ID],
     {'200': {'description': 'name -> values', 'schema': {
         'type': 'object', 'additionalProperties': _array(_STRING)}},
      '404': _NOT_FOUND}),
    ('get', '/api/v1/message/{ID}/raw', 'message', 'The source as received',
     [_ID, _query('dl', 'non-empty: as a download')],
     {'200': {'description': 'the source', 'schema': _STRING}, '404': _NOT_FOUND}),
    ('get', '/api/v1/message/{ID}/part/{PartID}', 'message', 'One part, decoded',
     [_ID, _path('PartID', 'the part (as in Attachments and Inline)'),
      _query('dl', 'non-empty: as a download')],
     {'200': {'description': 'the content', 'schema': _STRING}, '404': _NOT_FOUND}),
    ('post', '/api/v1/message/{ID}/release', 'message',
     'Relay a message to these recipients through the configured upstream (--web-relay)',
     [_ID, _body({'type': 'object', 'properties': {'To': _array(_STRING)}})],
     {'200': _OK, '400': _ERROR, '404': _NOT_FOUND}),
    ('get', '/api/v1/tags', 'tags', 'Every tag in use', [],
     {'200': {'description': 'tag names', 'schema': _array(_STRING)}}),
    ('put', '/api/v1/tags', 'tags', 'Give messages exactly these tags',
     [_body({'type': 'object', 'properties': {
         'IDs': _array(_STRING), 'Tags': _array(_STRING)}})],
     {'200': _OK, '400': _ERROR}),
    ('put', '/api/v1/tags/{Tag}', 'tags', 'Rename a tag',
     [_path('Tag', 'the tag'), _body({'type': 'object', 'properties': {'Name': _STRING}})],
     {'200': _OK, '400': _ERROR}),
    ('delete', '/api/v1/tags/{Tag}', 'tags', 'Take a tag off every message',
     [_path('Tag', 'the tag')], {'200': _OK, '400': _ERROR}),
    ('get', '/api/v1/info', 'application', 'Counts and runtime statistics', [],
     {'200': {'description': 'the information', 'schema': {'type': 'object'}}}),
    ('get', '/api/v1/webui', 'application', "The page's configuration (release)", [],
     {'200': {'description': 'the configuration', 'schema': {'type': 'object'}}}),
    ('get', '/api/v1/swagger.json', 'application', 'This document', [],
     {'200': {'description': 'OpenAPI 2.0', 'schema': {'type': 'object'}}}),
    ('get', '/view/{ID}.html', 'other', 'The HTML part, sandboxed, cid: images rewritten',
     [_ID], {'200': {'description': 'HTML', 'schema': _STRING}, '404': _NOT_FOUND}),
    ('get', '/view/{ID}.txt', 'other', 'The text part', [_ID],
     {'200': {'description': 'text', 'schema': _STRING}, '404': _NOT_FOUND}),
    ('get', '/api/events', 'other',
     'Live events: a websocket (RFC 6455) of {"Type", "Data"} JSON messages '
     '(new, stats, update, delete, truncate, prune)', [],
     {'101': {'description': 'switching to the websocket'},
      '400': _ERROR, '426': _ERROR, '503': _ERROR}),
    ('get', '/livez', 'other', 'Liveness', [], {'200': _OK}),
    ('get', '/readyz', 'other', 'Readiness', [], {'200': _OK}),
    ('get', '/api/v2/messages', 'mailhog', "List messages in MailHog's shape",
     _PAGING, {'200': _MAILHOG}),
    ('get', '/api/v2/search', 'mailhog', "Search as MailHog does",
     [_query('kind', 'from, to or containing', required=True),
      _query('query', 'a substring', required=True)] + _PAGING,
     {'200': _MAILHOG, '400': _ERROR}),
    ('delete', '/api/v1/messages/{ID}', 'mailhog', "Delete one message (MailHog's v1)",
     [_ID], {'200': {'description': 'deleted (empty)'}, '404': _NOT_FOUND}),
]

_ADDRESS = _ref('Address')
_DEFINITIONS: Dict[str, Any] = {
    'Address': {'type': 'object', 'properties': {'Name': _STRING, 'Address': _STRING}},
    'Attachment': {'type': 'object', 'properties': {
        'PartID': _STRING, 'FileName': _STRING, 'ContentType': _STRING,
        'ContentID': _STRING, 'Size': _INT,
        'Checksums': {'type': 'object', 'properties': {
            'MD5': _STRING, 'SHA1': _STRING, 'SHA256': _STRING}}}},
    'ListUnsubscribe': {'type': 'object', 'properties': {
        'Header': _STRING, 'Links': _array(_STRING), 'Errors': _STRING,
        'HeaderPost': _STRING}},
    'MessageSummary': {'type': 'object', 'properties': {
        'ID': _STRING, 'MessageID': _STRING, 'Read': _BOOL, 'From': _ADDRESS,
        'To': _array(_ADDRESS), 'Cc': _array(_ADDRESS), 'Bcc': _array(_ADDRESS),
        'ReplyTo': _array(_ADDRESS), 'Subject': _STRING,
        'Created': {'type': 'string', 'format': 'date-time'}, 'Username': _STRING,
        'Tags': _array(_STRING), 'Size': _INT, 'Attachments': _INT, 'Snippet': _STRING}},
    'MessagesSummary': {'type': 'object', 'properties': {
        'total': _INT, 'unread': _INT, 'count': _INT, 'messages_count': _INT,
        'messages_unread': _INT, 'start': _INT, 'tags': _array(_STRING),
        'messages': _array(_ref('MessageSummary'))}},
    'Message': {'type': 'object', 'properties': {
        'ID': _STRING, 'MessageID': _STRING, 'From': _ADDRESS, 'To': _array(_ADDRESS),
        'Cc': _array(_ADDRESS), 'Bcc': _array(_ADDRESS), 'ReplyTo': _array(_ADDRESS),
        'ReturnPath': _STRING, 'Subject': _STRING,
        'ListUnsubscribe': _ref('ListUnsubscribe'),
        'Date': {'type': 'string', 'format': 'date-time'}, 'Tags': _array(_STRING),
        'Username': _STRING, 'Text': _STRING, 'HTML': _STRING, 'Size': _INT,
        'Inline': _array(_ref('Attachment')), 'Attachments': _array(_ref('Attachment')),
        'Read': _BOOL}},
    'SendRequest': {'type': 'object', 'required': ['From'], 'properties': {
        'From': {'type': 'object', 'properties': {'Email': _STRING, 'Name': _STRING}},
        'To': _array({'type': 'object', 'properties': {'Email': _STRING, 'Name': _STRING}}),
        'Cc': _array({'type': 'object', 'properties': {'Email': _STRING, 'Name': _STRING}}),
        'Bcc': _array(_STRING),
        'ReplyTo': _array({'type': 'object', 'properties': {
            'Email': _STRING, 'Name': _STRING}}),
        'Subject': _STRING, 'Text': _STRING, 'HTML': _STRING,
        'Headers': {'type': 'object', 'additionalProperties': _STRING},
        'Tags': _array(_STRING),
        'Attachments': _array({'type': 'object', 'properties': {
            'Content': _STRING, 'Filename': _STRING, 'ContentType': _STRING,
            'ContentID': _STRING}})}},
    'MailHogMessages': {'type': 'object', 'properties': {
        'total': _INT, 'count': _INT, 'start': _INT,
        'items': _array({'type': 'object', 'properties': {
            'ID': _STRING, 'From': {'type': 'object'}, 'To': _array({'type': 'object'}),
            'Content': {'type': 'object'}, 'Created': _STRING,
            'MIME': {'type': 'object'}, 'Raw': {'type': 'object'}}})}},
}


def document() -> Dict[str, Any]:
    """The OpenAPI 2.0 document."""
    paths: Dict[str, Dict[str, Any]] = {}
    for method, path, tag, summary, parameters, responses in OPERATIONS:
        paths.setdefault(path, {})[method] = {
            'tags': [tag], 'summary': summary, 'parameters': parameters,
            'responses': responses,
            'produces': ['application/json', 'text/plain'],
        }
    return {
        'swagger': '2.0',
        'info': {'title': 'smtpd_compat web inbox API', 'version': VERSION,
                 'description': "Mailpit's API v1 (the parts this inbox serves), "
                                "MailHog's v2, and the live events."},
        'consumes': ['application/json'],
        'produces': ['application/json'],
        'schemes': ['http'],
        'paths': paths,
        'definitions': _DEFINITIONS,
    }


def get_swagger(h: Request) -> None:
    """``GET /api/v1/swagger.json``."""
    h._send_json(document())
