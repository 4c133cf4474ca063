import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apiHostFor, hostnameOf, isLoopbackHost, schemesFor } from '../../../src/source/registry/endpoint.js';

test('endpoint: Docker Hub is served by registry-1.docker.io', () => {
  assert.equal(apiHostFor('docker.io'), 'registry-1.docker.io');
  assert.equal(apiHostFor('quay.io'), 'quay.io');
  assert.equal(apiHostFor('127.0.0.1:5000'), '127.0.0.1:5000');
});

test('endpoint: loopback hosts', () => {
  for (const host of ['localhost', 'localhost:5000', 'registry.localhost:80', '127.0.0.1', '127.0.0.1:5000', '127.1.2.3:443', '[::1]:5000', '[::1]']) {
    assert.equal(isLoopbackHost(host), true, host);
  }
  for (const host of ['docker.io', '10.0.0.1:5000', '128.0.0.1', '127.0.0.1.example.com', 'localhost.example.com', '[::2]:5000', '192.168.1.2']) {
    assert.equal(isLoopbackHost(host), false, host);
  }
  assert.equal(hostnameOf('[::1]:5000'), '::1');
  assert.equal(hostnameOf('example.com:443'), 'example.com');
});

test('endpoint: plain HTTP only for loopback or insecure, and only after HTTPS', () => {
  assert.deepEqual(schemesFor('registry.example.com', false), ['https']);
  assert.deepEqual(schemesFor('10.1.2.3:5000', false), ['https']);
  assert.deepEqual(schemesFor('registry.example.com', true), ['https', 'http']);
  assert.deepEqual(schemesFor('127.0.0.1:5000', false), ['https', 'http']);
  assert.deepEqual(schemesFor('localhost:5000', false), ['https', 'http']);
});
